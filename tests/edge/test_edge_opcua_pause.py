"""OPC UA Stop as a pause, StartSingleJob, and the states and alarms driven by the runner's real state (issue 27
point 1): a real asyncua client over 127.0.0.1 against a real run fed by a camera the test triggers frame by frame
(hardware, so faked), with the real Modbus server and Prometheus registry beside it.

Stop -> Ready: every frame is still read and counted skipped `paused` (summary, Prometheus, the `resumed` event),
nothing is decided, the Modbus state register says 6; StartSingleJob from Ready decides the next frame that has
particles and returns to Ready; StartContinuous sorts again (with another recipe: swapped in first); Halt ends the
run; each decision arrives once as a ResultReady event equal to the events log. Initialized while the empty belt is
learned; BlindAlarm (no particle for [alarm] no_particles_s) and DriftAlarm (edge/drift.py's trigger) become active
conditions.
"""

import asyncio
import json
import os
import queue
import threading

import pytest

asyncua = pytest.importorskip("asyncua")
from asyncua import ua  # noqa: E402

from edge.opcua import VisionServer  # noqa: E402
from edge.opcua_access import Access  # noqa: E402
from edge.preprocess import open_rgb  # noqa: E402
from edge.sources import Capture, Frame  # noqa: E402

from helpers import belt_folder  # noqa: E402
from test_edge_belt import _discs, _particle_config  # noqa: E402
from test_edge_drift import _copy_model  # noqa: E402
from test_edge_opcua import PASSWORD, Collected, _start_arguments, _until, operator  # noqa: E402


class TriggeredCamera:
    """A live camera that takes a picture each time the test triggers it (`shoot`); read() waits for the trigger
    as a camera driver does, and returns (None: no more frames) once the capture is being stopped."""

    live = True

    def __init__(self, clock, pictures=()):
        self.clock, self.pictures, self.shots, self.taken = clock, list(pictures), queue.Queue(), 0
        self.stopping = threading.Event()

    def shoot(self, count=1, image=None):
        for _ in range(count):
            self.shots.put(image)

    def open(self):
        pass

    def read(self):
        while not self.stopping.is_set():
            try:
                image = self.shots.get(timeout=0.02)
            except queue.Empty:
                continue
            self.taken += 1
            if image is None:
                image = self.pictures[self.taken % len(self.pictures)]
            return Frame(str(self.taken), self.clock.now(), image)
        return None

    def close(self):
        pass


class CameraCapture(Capture):
    """The runner's Capture, telling the camera when it is stopped (a driver's read returns on close); its queue
    holds a whole burst of shots, so no frame is dropped and every count is exact."""

    def __init__(self, camera, runner):
        super().__init__(camera, runner.clock, runner.events, queue_size=64)

    def stop(self, timeout=2.0):
        self.source.stopping.set()
        super().stop(timeout)


def _serve(runner):
    server = VisionServer(runner, Access("operator", PASSWORD), grace_s=0.0)
    runner.publishers.append(server)
    return server, server.serve("127.0.0.1", 0).split(" ", 1)[1]


def _run(runner, scenario):
    """_run(runner, scenario), the runner stopped if the scenario fails (asyncio.run would wait for its thread)."""
    async def guarded():
        try:
            return await scenario()
        except BaseException:
            runner.stop("the test failed")
            raise

    return asyncio.run(guarded())


def _lines(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def test_stop_pauses_a_single_job_decides_one_start_continuous_resumes_halt_ends_and_drift_trips(
        tmp_path, tiny_export, write_config, make_runner):
    from pymodbus.client import ModbusTcpClient

    from edge.drivers.modbus_server import LAST_SEQ, PAUSED, RUNNING, STATE
    from edge.telemetry import Telemetry
    from test_edge_modbus import free_port

    labels = tiny_export["labels"]  # the calibration items were all the first class: the belt's mix drifts
    reference = {"subset": "calib", "n": 100, "class_counts": [100] + [0] * (len(labels) - 1), "top_edges": [0.9],
                 "top_counts": [0, 100]}
    model = _copy_model(tiny_export, str(tmp_path), reference)
    folder = belt_folder(tmp_path, tiny_export, 6)
    port = free_port()
    config = write_config(actuator={"type": "modbus", "port": port, "stop_grace_s": 0.0}, drift={"window": 50},
                          source={"stall_timeout_s": 60.0})
    runner, events_path = make_runner(config, model)
    runner.attach_telemetry(Telemetry(runner.model))
    camera = TriggeredCamera(runner.clock, [open_rgb(os.path.join(folder, f)) for f in sorted(os.listdir(folder))])
    server, url = _serve(runner)
    plc = ModbusTcpClient("127.0.0.1", port=port)
    seen = Collected()

    def read_board():
        registers = plc.read_holding_registers(0, count=8, device_id=1).registers
        return registers[STATE], registers[LAST_SEQ] << 16 | registers[LAST_SEQ + 1]

    async def board(state):
        """(state, last sequence) once the heartbeat (10 a second) has written `state`, or as it is after 2 s."""
        for _ in range(100):
            if read_board()[0] == state:
                break
            await asyncio.sleep(0.02)
        return read_board()

    def paused():
        return runner.tally.skipped_by["paused"]

    def results():  # the OPC UA server is the last publisher: a decision it sent is on the Modbus board too
        return [e for e in seen.events if hasattr(e, "Seq")]

    async def scenario():
        loop = asyncio.get_running_loop()
        async with operator(url, seen) as vision:
            sorting = loop.run_in_executor(None, runner.run, CameraCapture(camera, runner))
            camera.shoot(5)
            await _until(lambda: len(results()) == 5)
            assert plc.connect()
            running = await vision.until(("Operational", "ContinuousExecution")), await board(RUNNING)

            async def call(node, name, *arguments):
                return await node.call_method(f"{vision.mv}:{name}", *arguments)

            stop = await call(vision.automatic, "Stop", ua.Variant(3, ua.VariantType.Int32),
                              ua.LocalizedText("belt stopped"))
            at_stop = await vision.state()  # written before the call returned
            camera.shoot(8)
            await _until(lambda: paused() == 8)
            during_pause = runner.tally.items, await board(PAUSED)
            single = await call(vision.automatic, "StartSingleJob", *_start_arguments(""))
            at_single = await vision.state()
            await asyncio.sleep(0.3)  # no picture yet: nothing decided, the job still waits
            waiting = await vision.state(), runner.tally.items
            camera.shoot(3)  # the first is the job's picture, the other two are paused again
            await _until(lambda: paused() == 10)
            after_single = await vision.until(("Operational", "Ready")), runner.tally.items
            resume = await call(vision.automatic, "StartContinuous", *_start_arguments(""))
            at_resume = await vision.state()
            camera.shoot(55)
            await _until(lambda: len(results()) == 61)
            await _until(lambda: any(getattr(e, "ConditionName", None) == "DriftAlarm" for e in seen.events))
            drift = await (await vision.system.get_child(
                [f"{vision.idx}:Alarms", f"{vision.idx}:DriftAlarm", "0:ActiveState"])).read_value()
            resumed = await board(RUNNING), await vision.state()
            halt = await call(vision.machine, "Halt", ua.Variant(0, ua.VariantType.Int32), ua.LocalizedText("end"))
            summary = await asyncio.wait_for(sorting, 30)
            await _until(lambda: len(results()) >= summary["items"])
            await asyncio.sleep(0.3)  # a duplicate would arrive now
            return (running, stop, at_stop, during_pause, single, at_single, waiting, after_single, resume,
                    at_resume, drift.Text, resumed, halt, summary)

    try:
        (running, stop, at_stop, during_pause, single, at_single, waiting, after_single, resume, at_resume, drift,
         resumed, halt, summary) = _run(runner, scenario)
    finally:
        server.close()
        plc.close()
    assert running == (("Operational", "ContinuousExecution"), (RUNNING, 5))
    assert stop == 0 and at_stop == ("Operational", "Ready")
    assert during_pause == (5, (PAUSED, 5))  # 8 frames read, none decided, no new slot for the PLC
    assert single[1] == 0 and at_single == ("Operational", "SingleExecution")
    assert waiting == (("Operational", "SingleExecution"), 5)
    assert after_single == (("Operational", "Ready"), 6)  # one picture decided, the next two paused again
    assert resume[1] == 0 and at_resume == ("Operational", "ContinuousExecution")
    assert resumed == ((RUNNING, 61), ("Operational", "ContinuousExecution"))  # drift alarms; it is no Error
    assert drift == "Active" and summary["drift_alarms"] == 1
    assert halt == 0 and summary["exit"] == "opcua Halt: end" and summary["items"] == 61
    assert summary["frames_skipped_by_reason"] == {"paused": 10} and summary["frames_dropped"] == 0
    assert runner.telemetry.registry.get_sample_value("mineralnet_runner_frames_skipped_by_reason_total",
                                                      {"reason": "paused"}) == 10
    lines = _lines(events_path)
    kinds = [line["type"] for line in lines if line["type"] in ("paused", "single_job", "resumed")]
    assert kinds == ["paused", "single_job", "resumed"]
    resumed_line = [line for line in lines if line["type"] == "resumed"][0]
    assert resumed_line["frames_paused"] == 10 and resumed_line["reason"] == "opcua StartContinuous"
    assert [line for line in lines if line["type"] == "paused"][0]["reason"] == "opcua Stop: belt stopped"
    assert [line["items"] for line in lines if line["type"] == "single_job"] == [1]
    logged = [{k: v for k, v in line.items() if k not in ("type", "time")} for line in lines if line["type"] == "item"]
    assert [json.loads(e.Record) for e in results()] == logged and len(logged) == 61  # each once, equal to the log
    audit = [line["event"] for line in lines if line["type"] == "opcua"]
    assert audit == ["stop", "start_single_job", "start_continuous", "halt", "closed"]


def test_initialized_while_learning_a_single_job_waits_for_particles_a_recipe_resumes_and_blind_is_an_alarm(
        tmp_path, tiny_export, write_config, make_runner):
    config = _particle_config(write_config, tiny_export, particles={"background_frames": 3},
                              alarm={"no_particles_s": 1.0}, source={"stall_timeout_s": 60.0})
    runner, events_path = make_runner(config, tiny_export["float32"])
    camera = TriggeredCamera(runner.clock)
    empty = _discs([])
    server, url = _serve(runner)

    async def scenario():
        loop = asyncio.get_running_loop()
        seen = Collected()
        async with operator(url, seen, results=False) as vision:
            sorting = loop.run_in_executor(None, runner.run, CameraCapture(camera, runner))
            camera.shoot(2, empty)  # two of the three background frames
            await _until(lambda: camera.taken == 2)
            learning = await vision.until(("Operational", "Initialized"))
            camera.shoot(1, empty)
            learned = await vision.until(("Operational", "ContinuousExecution"))
            await vision.automatic.call_method(f"{vision.mv}:Stop", ua.Variant(0, ua.VariantType.Int32),
                                               ua.LocalizedText(""))
            camera.shoot(3, empty)
            await asyncio.sleep(1.2)  # paused longer than no_particles_s: a pause is not blindness
            camera.shoot(2, empty)
            await _until(lambda: runner.tally.skipped_by["paused"] == 5)
            await vision.automatic.call_method(f"{vision.mv}:StartSingleJob", *_start_arguments(""))
            camera.shoot(2, empty)  # no particle: the job goes on
            await _until(lambda: camera.taken == 10)
            await asyncio.sleep(0.2)
            waiting = await vision.state(), runner.tally.items
            camera.shoot(1, _discs([(320, 180, 12.0)]))
            done = await vision.until(("Operational", "Ready")), runner.tally.items
            await vision.recipes.call_method(f"{vision.mv}:PrepareRecipe", ua.RecipeIdExternalDataType(
                Id=tiny_export["int8"]), ua.RecipeIdInternalDataType(Id=""))
            swap = await vision.automatic.call_method(f"{vision.mv}:StartContinuous", *_start_arguments(
                tiny_export["int8"]))  # resumed with another recipe: swapped in first
            swapped = swap[1], await vision.state(), runner.model.path
            unblind = runner.blind.problem
            for _ in range(14):  # an empty belt for 1.4 s after the disc: no particle for no_particles_s
                camera.shoot(1, empty)
                await asyncio.sleep(0.1)
            blind = await vision.until(("Error", None))
            alarm = await (await vision.system.get_child(
                [f"{vision.idx}:Alarms", f"{vision.idx}:BlindAlarm", "0:ActiveState"])).read_value()
            await _until(lambda: any(getattr(e, "ConditionName", None) == "BlindAlarm" for e in seen.events))
            camera.stopping.set()  # the camera is unplugged: the end of the source
            summary = await asyncio.wait_for(sorting, 30)
            return learning, learned, waiting, done, swapped, unblind, blind, alarm.Text, summary, seen

    try:
        learning, learned, waiting, done, swapped, unblind, blind, alarm, summary, seen = _run(runner, scenario)
    finally:
        server.close()
    assert learning == ("Operational", "Initialized")
    assert learned == ("Operational", "ContinuousExecution")
    assert waiting == (("Operational", "SingleExecution"), 0)  # empty-belt frames are not the job's frame
    assert done == (("Operational", "Ready"), 1)
    assert swapped == (0, ("Operational", "ContinuousExecution"), tiny_export["int8"])
    assert unblind is None  # 1.2 s paused with no particle did not trip the blind alarm
    assert blind == ("Error", None) and alarm == "Active" and summary["blind_alarms"] == 1
    event = [e for e in seen.events if getattr(e, "ConditionName", None) == "BlindAlarm"][0]
    assert event.ActiveState.Text == "Active" and event.Severity == 800
    assert summary["frames_skipped_by_reason"] == {"paused": 5} and summary["items"] == 1
    assert summary["exit"] == "end of source" and summary["promotions"] == 1
    lines = _lines(events_path)
    assert [line["type"] for line in lines if line["type"] in ("paused", "model_promoted", "resumed")] == [
        "paused", "model_promoted", "resumed"]
