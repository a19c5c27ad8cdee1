"""Modbus TCP, the runner as server: the PLC polls the runner's decisions, as it would a vision sensor's.

On a real sorting line the PLC owns the belt encoder and fires the valves; the vision computer only publishes one
decision per item. The register map (holding registers, function code 3; the same values answer function code 4)
is documented as a table in edge/README.md and fixed here:

    0        heartbeat: +1 (mod 65536) 10 times a second from its own thread, whatever the frame work (a slow frame,
             learning the belt); a value that stops changing for 250 ms means a dead or stuck runner, and the PLC
             should fail safe
    1        runner state: 0 starting, 1 running, 2 source failing or stalled, 3 stopped, 4 learning the empty belt
             ([particles]: the first background_frames frames; nothing is sorted yet), 5 blind (frames arrive but
             none can be used for [alarm] blind_s: wrong size, ROI outside them; or no particle for no_particles_s),
             6 paused (OPC UA Stop: frames are read and counted, nothing is decided, no valve fires)
    2        model ok: 1 while the model classifies, 0 after an inference error (until the next success) or at stop
    3        ring size N
    4, 5     last sequence number (32 bits, high word first); 0 before the first item
    6        number of bins B (bin codes 0 .. B-1)
    7        register map version (1)
    9        alarm bits, for a stack light: 1 recheck-share alarm, 2 drift alarm, 4 blind, 8 source failing or
             stalled, 16 model fault (an inference error, until the next success); 0 when all is well
    10 + 2b  items sent to bin code b so far (32 bits, high word first), b < 16
    100 + 8k ring slot k = (sequence - 1) mod N, 8 registers: sequence (2, high first), bin code, position (2, high
             first: the encoder count at capture on an encoder-timed belt, 0 for a `no_position` item; the capture
             time in ms mod 2**32 on a clock-timed belt), lane
             (0: one lane), class code (1 + the label's index in the sidecar, 0 = none), confidence x 1000

With [particles] the board also carries the valve bar's commands (map version 2; the item ring stays empty, the
particles' decisions are in the events), one per ejected particle, for the PLC to fire at the given position:

    8        valve ring size V (0: no valve block, map version 1)
    60, 61   last valve command sequence (32 bits, high word first); 0 before the first
    62       valve count of the bar ([valves] count)
    63       position unit of the valve block: 0 ms of the runner's clock (clock-timed belt), 1 encoder counts
    64, 65   the runner's clock in ms mod 2**32 (written at every heartbeat and command), so that on a clock-timed
             belt the PLC can turn an opening time into a delay: open - clock, as old as its poll
    9000 + 8v  valve slot v = (command sequence - 1) mod V, 8 registers: command sequence (2, high first), first
             lane, lane count (the lanes first .. first + count - 1 open together), opening position (2, high first:
             the encoder count, modulo the encoder's counter, or the runner's clock in ms mod 2**32), pulse length
             in the same unit (saturating at 65535), bin code of the bar's bin

Bin code 0 is the recheck bin, then the other bins in name order (Config.bin_codes). Every item is published, the
recheck ones too, so the PLC sees every sequence number. Slot registers are written before the last-sequence
register, and a read copies the registers under the same lock the runner writes them with, so one read request
never mixes two items. The server only answers polls: a PLC that stops polling changes nothing for sorting.

A bad request is answered, never dumped: bytes that are not Modbus TCP close that connection, a wrong unit id is
answered with exception 0x0B (gateway target failed to respond) and an unknown function code with 0x01 (illegal
function); each gives one stderr line naming the client, once per client address and kind. pymodbus's own error
lines are cut to their first line: it appends its last 20 frames (other clients' register contents) and tracebacks.
At the end of a run the state register reads 3 (stopped) for `[actuator] stop_grace_s` (default 2 s) before the
server closes, so a PLC polling every second sees the stop instead of a lost connection.
"""

import asyncio
import logging
import sys
import threading

from edge.valves import lane_span

LIBRARY = ("pymodbus", "pymodbus")
DEFAULT_PORT = 5020

HEARTBEAT, STATE, MODEL_OK, RING_SIZE, LAST_SEQ, BIN_COUNT, MAP_VERSION, ALARMS = 0, 1, 2, 3, 4, 6, 7, 9
RECHECK_ALARM, DRIFT_ALARM, BLIND_ALARM, SOURCE_ALARM, MODEL_ALARM = 1, 2, 4, 8, 16  # register ALARMS's bits
BIN_COUNTERS, MAX_BINS, RING, SLOT = 10, 16, 100, 8
VALVE_RING_SIZE, VALVE_LAST_SEQ, VALVE_COUNT, VALVE_UNIT, VALVE_CLOCK, VALVE_RING = 8, 60, 62, 63, 64, 9000
UNIT_MS, UNIT_COUNTS = 0, 1
STARTING, RUNNING, SOURCE_FAILING, STOPPED, LEARNING, BLIND, PAUSED = 0, 1, 2, 3, 4, 5, 6
ILLEGAL_FUNCTION, GATEWAY_NO_RESPONSE = 0x01, 0x0B  # the Modbus exception codes of a bad request
_LOGGED_MAX = 1000  # client addresses x kinds remembered for "once per client": a bound on a scanned port
_peer = threading.local()  # the client whose bytes pymodbus is parsing now (pymodbus's own lines name it)


def _ms(seconds):
    return int(seconds * 1000) % (1 << 32)


def _words(value):
    value %= 1 << 32
    return [value >> 16, value & 0xFFFF]


class ModbusBoard:
    """The register map above, served by pymodbus's TCP server in its own thread and event loop.

    `valves` (the [valves] config, with [particles]) adds the valve block of `ring_size` slots; `modulus` (the
    encoder counter's range, `[belt] position = "modbus"`) says its positions are encoder counts, else ms of
    `clock`."""

    def __init__(self, host, port, unit_id, ring_size, bin_codes, labels, clock, valves=None, modulus=None,
                 stop_grace_s=0.0):
        self.host = host
        self.port = port
        self.unit_id = unit_id
        self.ring_size = ring_size
        self.bin_codes = {name: code for code, name in enumerate(bin_codes)}
        self.class_codes = {label: index + 1 for index, label in enumerate(labels)}
        self.clock = clock
        self.valves = valves
        self.modulus = modulus
        size = RING + SLOT * ring_size if valves is None else VALVE_RING + SLOT * ring_size
        self.registers = [0] * size
        self.registers[RING_SIZE], self.registers[BIN_COUNT], self.registers[MAP_VERSION] = ring_size, len(bin_codes), 1
        self.registers[MODEL_OK] = 1
        self._valve_sequence = 0
        if valves is not None:
            self.registers[MAP_VERSION], self.registers[VALVE_RING_SIZE] = 2, ring_size
            self.registers[VALVE_COUNT] = valves.count
            self.registers[VALVE_UNIT] = UNIT_MS if modulus is None else UNIT_COUNTS
        self.stop_grace_s = stop_grace_s
        self.listening = []
        self._logged = set()  # (client host, kind) already logged
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

    def refuse(self, peer, kind, what):
        """One stderr line for a bad request from `peer` ("host:port"), the first of its `kind` from that host."""
        key = (peer.rsplit(":", 1)[0], kind)
        if key in self._logged or len(self._logged) >= _LOGGED_MAX:
            return
        self._logged.add(key)
        print(f"runner: modbus client {peer} {what} (further {kind} from {key[0]} not logged)", file=sys.stderr,
              flush=True)

    def open(self):
        from pymodbus.simulator import DataType, SimData, SimDevice

        _first_lines_only()

        self._loop = asyncio.new_event_loop()
        started, failure = threading.Event(), []

        async def serve():
            device = SimDevice(
                id=self.unit_id, action=self._serve_read,
                simdata=[SimData(0, count=len(self.registers), values=0, datatype=DataType.REGISTERS, readonly=True)],
            )
            self._server = _server(self, device)
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

    def send(self, command, due, frame_id):
        """Single items: the PLC fires the valves from the published decisions, nothing to command here. With a
        valve block, `command` (edge/valves.py Command) goes into the next valve slot."""
        if self.valves is None:
            return
        first, count = lane_span(command.lanes)
        if self.modulus is not None:  # counts modulo the counter: a pulse may wrap it
            opening = int(round(command.open_at))
            pulse = int(round(command.close_at - command.open_at)) % self.modulus
        else:
            opening, pulse = _ms(command.open_at), round((command.close_at - command.open_at) * 1000.0)
        with self._lock:
            self._valve_sequence += 1
            slot = VALVE_RING + SLOT * ((self._valve_sequence - 1) % self.ring_size)
            self.registers[slot:slot + SLOT] = [*_words(self._valve_sequence), first, count, *_words(opening),
                                                min(max(pulse, 0), 0xFFFF), self.bin_codes[self.valves.bin]]
            self._tick()
            self.registers[VALVE_LAST_SEQ:VALVE_LAST_SEQ + 2] = _words(self._valve_sequence)

    def _tick(self):
        """The runner's clock in ms for the PLC (valve block only); under the lock."""
        if self.valves is not None:
            self.registers[VALVE_CLOCK:VALVE_CLOCK + 2] = _words(_ms(self.clock.now()))

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

    def heartbeat(self, state, model_ok, alarms=0):
        with self._lock:
            self.registers[HEARTBEAT] = (self.registers[HEARTBEAT] + 1) & 0xFFFF
            self.registers[STATE] = state
            self.registers[MODEL_OK] = int(bool(model_ok))
            self.registers[ALARMS] = alarms
            self._tick()

    def finish(self):
        """The run has ended: serve state 3 (stopped) for `stop_grace_s` (the heartbeat standing still), then close.
        Only here: a close after a fault (edge/actuate.py) must not hold the sorting loop for the grace."""
        if self._loop is None or self._loop.is_closed():
            return
        self.heartbeat(STOPPED, False, self.registers[ALARMS])
        self.clock.wait(threading.Event(), self.stop_grace_s)
        self.close()

    def close(self):
        if self._loop is None or self._loop.is_closed():
            return
        self.heartbeat(STOPPED, False, self.registers[ALARMS])
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(5.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        self._loop.close()
        self.listening = []


def _server(board, device):
    """pymodbus's TCP server for `board` whose connections answer bad requests themselves, in one line each."""
    from pymodbus.pdu import ExceptionResponse
    from pymodbus.server import ModbusTcpServer
    from pymodbus.server.requesthandler import ServerRequestHandler

    class Connection(ServerRequestHandler):
        def peer(self):
            address = self.transport.get_extra_info("peername") if self.transport else None
            return f"{address[0]}:{address[1]}" if address else "?"

        def callback_data(self, data, addr=None):
            if len(data) >= 7:  # the MBAP header: transaction, protocol 0, length of unit + PDU (2 .. 254)
                protocol, length = int.from_bytes(data[2:4], "big"), int.from_bytes(data[4:6], "big")
                if protocol != 0 or not 2 <= length <= 254:  # no frame boundary to resynchronise on: hang up
                    board.refuse(self.peer(), "non-Modbus bytes", "sent bytes that are not Modbus TCP: connection "
                                 "closed")
                    self.transport.close()
                    return len(data)
            _peer.name = self.peer()
            try:
                return super().callback_data(data, addr)
            finally:
                _peer.name = None

        async def handle_request(self):
            request = self.last_pdu
            if request is not None and request.dev_id != board.unit_id:
                board.refuse(self.peer(), "wrong unit ids", f"asked for unit {request.dev_id}, this server is unit "
                             f"{board.unit_id}: answered exception 0x0B (check the PLC's unit id)")
                return self._answer(request, GATEWAY_NO_RESPONSE)
            if isinstance(request, ExceptionResponse):  # pymodbus decodes a function code >= 0x80 as one
                board.refuse(self.peer(), "unknown function codes", f"sent function code {request.function_code}: "
                             "answered exception 0x01 (this server answers function codes 3 and 4)")
                return self._answer(request, ILLEGAL_FUNCTION)
            return await super().handle_request()

        def _answer(self, request, code):
            self.server_send(ExceptionResponse(request.function_code & 0x7F, code, request.dev_id,
                                               request.transaction_id), self.last_addr)

    class Server(ModbusTcpServer):
        def callback_new_connection(self):
            return Connection(self, self.trace_packet, self.trace_pdu, self.trace_connect)

    return Server(device, address=(board.host, board.port))


class _FirstLine(logging.Filter):
    """pymodbus's error lines end with its last 20 frames (other clients' register contents) and often a
    traceback: keep the first line, naming the client when it came from one."""

    def filter(self, record):
        message = record.getMessage().split("\n", 1)[0].split("; Traceback", 1)[0]
        peer = getattr(_peer, "name", None)
        record.msg, record.args = (f"{message} (modbus client {peer})" if peer else message), None
        return True


def _first_lines_only():
    logger = logging.getLogger("pymodbus.logging")
    if not any(isinstance(f, _FirstLine) for f in logger.filters):
        logger.addFilter(_FirstLine())


def port(config):
    """The TCP port the server listens on: `[actuator] port`, 5020 when unset (502 needs root)."""
    return config.actuator.port if config.actuator.port != "" else DEFAULT_PORT


def check(config):
    if isinstance(config.actuator.port, str) and config.actuator.port != "" or not 0 < port(config) < 65536:
        raise config.error("actuator.port", "must be a TCP port number 1-65535 for type \"modbus\" (default 5020)")
    if len(config.bin_codes()) > MAX_BINS:
        raise config.error("bins.classes", f"names more than {MAX_BINS} bins, the most the Modbus register map counts")


def bin_driver(config, clock, labels):
    actuator = config.actuator
    return ModbusBoard(actuator.host, port(config), actuator.unit_id, actuator.ring_size, config.bin_codes(), labels,
                       clock, stop_grace_s=actuator.stop_grace_s)


def valve_driver(config, clock, labels):
    actuator = config.actuator
    modulus = 1 << (16 * config.encoder.registers) if config.belt.position == "modbus" else None
    return ModbusBoard(actuator.host, port(config), actuator.unit_id, actuator.ring_size, config.bin_codes(), labels,
                       clock, valves=config.valves, modulus=modulus, stop_grace_s=actuator.stop_grace_s)
