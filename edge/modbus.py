"""Modbus TCP, the runner as server: the PLC polls the runner's decisions, as it would a vision sensor's.

On a real sorting line the PLC owns the belt encoder and fires the valves; the vision computer only publishes one
decision per item. The register map (holding registers, function code 3; the same values answer function code 4)
is documented as a table in edge/README.md and fixed here:

    0        heartbeat: +1 (mod 65536) at every turn of the sorting loop, at least 4 times a second; a value that
             stops changing means a dead or stuck runner, and the PLC should fail safe
    1        runner state: 0 starting, 1 running, 2 source failing or stalled, 3 stopped
    2        model ok: 1 while the model classifies, 0 after an inference error (until the next success) or at stop
    3        ring size N
    4, 5     last sequence number (32 bits, high word first); 0 before the first item
    6        number of bins B (bin codes 0 .. B-1)
    7        register map version (1)
    10 + 2b  items sent to bin code b so far (32 bits, high word first), b < 16
    100 + 8k ring slot k = (sequence - 1) mod N, 8 registers: sequence (2, high first), bin code, position (2, high
             first: the encoder count at capture on an encoder-timed belt, 0 for a `no_position` item; the capture
             time in ms mod 2**32 on a clock-timed belt), lane
             (0: one lane), class code (1 + the label's index in the sidecar, 0 = none), confidence x 1000

Bin code 0 is the recheck bin, then the other bins in name order (Config.bin_codes). Every item is published, the
recheck ones too, so the PLC sees every sequence number. Slot registers are written before the last-sequence
register, and a read copies the registers under the same lock the runner writes them with, so one read request
never mixes two items. The server only answers polls: a PLC that stops polling changes nothing for sorting.
"""

import asyncio
import threading

HEARTBEAT, STATE, MODEL_OK, RING_SIZE, LAST_SEQ, BIN_COUNT, MAP_VERSION = 0, 1, 2, 3, 4, 6, 7
BIN_COUNTERS, MAX_BINS, RING, SLOT = 10, 16, 100, 8
STARTING, RUNNING, SOURCE_FAILING, STOPPED = 0, 1, 2, 3


def _words(value):
    value %= 1 << 32
    return [value >> 16, value & 0xFFFF]


class ModbusBoard:
    """The register map above, served by pymodbus's TCP server in its own thread and event loop."""

    def __init__(self, host, port, unit_id, ring_size, bin_codes, labels, clock):
        self.host = host
        self.port = port
        self.unit_id = unit_id
        self.ring_size = ring_size
        self.bin_codes = {name: code for code, name in enumerate(bin_codes)}
        self.class_codes = {label: index + 1 for index, label in enumerate(labels)}
        self.clock = clock
        self.registers = [0] * (RING + SLOT * ring_size)
        self.registers[RING_SIZE], self.registers[BIN_COUNT], self.registers[MAP_VERSION] = ring_size, len(bin_codes), 1
        self.registers[MODEL_OK] = 1
        self.listening = []
        self._lock = threading.Lock()
        self._loop = None
        self._server = None
        self._thread = None

    async def _serve_read(self, function_code, start_address, address, count, current_registers, set_values):
        """pymodbus's per-request hook: copy the requested registers from ours, under the lock."""
        offset = address - start_address
        with self._lock:
            current_registers[offset:offset + count] = self.registers[address:address + count]
        return None

    def open(self):
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        self._loop = asyncio.new_event_loop()
        started, failure = threading.Event(), []

        async def serve():
            device = SimDevice(
                id=self.unit_id, action=self._serve_read,
                simdata=[SimData(0, count=len(self.registers), values=0, datatype=DataType.REGISTERS, readonly=True)],
            )
            self._server = ModbusTcpServer(device, address=(self.host, self.port))
            await self._server.serve_forever(background=True)

        def run():
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(serve())
            except Exception as error:  # RuntimeError "Could not start listen": port in use, no such address
                failure.append(error)
                return
            finally:
                started.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="modbus", daemon=True)
        self._thread.start()
        started.wait(10.0)
        if failure or not started.is_set():
            self._thread.join(1.0)
            self._loop.close()
            raise OSError(f"Modbus server cannot listen on {self.host}:{self.port} (port in use or address not here)")
        self.listening = [f"modbus {self.host}:{self.port} unit {self.unit_id}"]

    def send(self, bin_name, due, frame_id):
        """The PLC fires the valves from the published decisions: nothing to command here."""

    def record(self, item, capture_time, position=None):
        """Publish one decided item (the runner's item record) in the ring buffer and count its bin."""
        sequence = item["seq"]
        code = self.bin_codes[item["bin"]]
        confidence = round(item["top3"][0]["p"] * 1000) if item["top3"] else 0
        if position is None:
            position = int(capture_time * 1000)
        slot = RING + SLOT * ((sequence - 1) % self.ring_size)
        entry = [*_words(sequence), code, *_words(position), 0, self.class_codes.get(item["class"], 0), confidence]
        with self._lock:
            self.registers[slot:slot + SLOT] = entry
            if code < MAX_BINS:
                counter = BIN_COUNTERS + 2 * code
                high, low = self.registers[counter:counter + 2]
                self.registers[counter:counter + 2] = _words((high << 16 | low) + 1)
            self.registers[LAST_SEQ:LAST_SEQ + 2] = _words(sequence)

    def heartbeat(self, state, model_ok):
        with self._lock:
            self.registers[HEARTBEAT] = (self.registers[HEARTBEAT] + 1) & 0xFFFF
            self.registers[STATE] = state
            self.registers[MODEL_OK] = int(bool(model_ok))

    def close(self):
        if self._loop is None or self._loop.is_closed():
            return
        self.heartbeat(STOPPED, False)
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(5.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        self._loop.close()
        self.listening = []
