"""OPC UA Machine Vision server (`--opcua-port`): the runner as an OPC 40100-1 VisionSystem, through asyncua.

Vision-system integrators expect the OPC UA Machine Vision companion specification beside Modbus. This server
publishes, from the runner's own state and its stream of decisions (edge/publish.py):

- Objects/VisionSystem, an instance of the specification's VisionSystemType, whose VisionStateMachine follows the
  runner (polled every 0.1 s, and written at once by a method that changes it; read with `vision_state`):
      Preoperational                   the server is up, the run has not started
      Operational / Initialized        learning the empty belt ([particles]): nothing is sorted yet
      Operational / ContinuousExecution   sorting
      Operational / Ready              paused by Stop (Sorter.pause: frames read and counted skipped `paused`,
                                       nothing decided, no new valve fires), or Halt's current frame finishing
      Operational / SingleExecution    StartSingleJob from Ready: until the next frame with particles is decided
      Error                            the source is failing or stalled, the runner is blind, or the model faulted
      Halted                           the run has ended (end of source, signal, Halt); kept for GRACE_S, then the
                                       server closes with the runner
- a ResultReady event per decision, emitted by the VisionSystem object (subscribe to its events), of the subtype
  SortResultReadyEventType (namespace urn:mineralnet:edge) carrying the specification's fields (ResultId
  "JOB/seq", JobId = the run's start time, ResultState 1 sorted by class, 0 to recheck, -1 inference error,
  InternalRecipeId = the model's sha256, CreationTime) and the sorter's: Seq, Class, Confidence (top-1
  probability), Decision (the bin the model's decision asked for), Bin (where it went), Reason, Lanes (belt) and
  Record (the events log's JSON line of this decision, byte for byte the same fields);
- alarm conditions (AlarmConditionType objects under VisionSystem/Alarms, with an event at each change) for the
  runner's alarms, the same five bits as Modbus register 9: RecheckAlarm, DriftAlarm, BlindAlarm, SourceAlarm,
  ModelAlarm;
- the methods (edge/opcua_methods.py): RecipeManagement/PrepareRecipe (a recipe is a model file and its decision
  config), StartContinuous (resume, swapping in a prepared recipe), StartSingleJob, Stop (pause) and Halt (end the
  run); RecipeManagement/LiveModel, LiveModelSha256 and LastProblem say what runs and what a call refused.

Access (edge/opcua_access.py): anonymous sessions browse, read and subscribe; Write and method calls need the user
and password or a trusted client certificate.

Types come from the OPC Foundation's published NodeSet2 of OPC 40100-1 v1.00 (opcua_nodeset/, MIT licence,
github.com/OPCFoundation/UA-Nodeset), not rebuilt in code: a generic Machine Vision client then finds the
standard type and state NodeIds, and the server cannot drift from the specification. It is loaded at start
(about 1.5 s on a 2-core machine), which a runner pays once.

The server runs its own asyncio loop in a daemon thread; the sorting thread only queues each decision's record
(`publish`, a few microseconds), so a slow or absent client never delays sorting. At most QUEUE_MAX results wait;
beyond that they are counted in `dropped` (the `opcua` stop line).
"""

import asyncio
import datetime
import gzip
import json
import logging
import os
import threading
import time
import types

from edge.drivers.modbus_server import (
    BLIND, BLIND_ALARM, DRIFT_ALARM, LEARNING, MODEL_ALARM, RECHECK_ALARM, SOURCE_ALARM, SOURCE_FAILING,
)
from edge.opcua_methods import VisionMethods

NODESET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "opcua_nodeset",
                       "Opc.Ua.MachineVision.NodeSet2.xml.gz")
MV_URI, URI = "http://opcfoundation.org/UA/MachineVision", "urn:mineralnet:edge"
POLL_S, GRACE_S, QUEUE_MAX = 0.1, 2.0, 100_000
# State objects of VisionStateMachineType / VisionAutomaticModeStateMachineType in the NodeSet2 (CurrentState/Id).
STATE_IDS = {"Preoperational": 5028, "Halted": 5029, "Error": 5030, "Operational": 5031}
AUTOMATIC_IDS = {"Initialized": 5056, "Ready": 5057, "SingleExecution": 5058, "ContinuousExecution": 5059}
VISION_SYSTEM_TYPE, RESULT_READY_TYPE = 1003, 1024
ALARMS = (  # (condition name, Modbus alarm bit, severity, message)
    ("RecheckAlarm", RECHECK_ALARM, 600, "recheck share too high: check the lens, the light and the material"),
    ("DriftAlarm", DRIFT_ALARM, 500, "the classes seen drift from the calibration images"),
    ("BlindAlarm", BLIND_ALARM, 800, "frames arrive but none can be used"),
    ("SourceAlarm", SOURCE_ALARM, 800, "the source is failing or stalled"),
    ("ModelAlarm", MODEL_ALARM, 900, "the model failed to classify (inference error)"),
)
RESULT_FIELDS = (("Seq", "UInt64"), ("Class", "String"), ("Confidence", "Double"), ("Decision", "String"),
                 ("Bin", "String"), ("Reason", "String"), ("Record", "String"))


def vision_state(runner, stopping=False):
    """(VisionStateMachine state, automatic-mode sub-state or None) of the runner now (see the module docstring)."""
    if runner.finished:
        return "Halted", None
    if runner.capture is None:
        return "Preoperational", None
    code, model_ok, _ = runner.state()
    if code in (BLIND, SOURCE_FAILING) or not model_ok:
        return "Error", None
    if stopping:
        return "Operational", "Ready"
    if runner.paused is not None:
        return "Operational", ("SingleExecution" if runner.single else "Ready")
    return "Operational", ("Initialized" if code == LEARNING else "ContinuousExecution")


def result_fields(record, decided):
    """The sorter's fields of one decision's ResultReady event, from its events-log record."""
    top = record.get("top3") or [{}]
    return {"Seq": record["seq"], "Class": record.get("class") or "", "Confidence": float(top[0].get("p", 0.0)),
            "Decision": decided or "", "Bin": record["bin"], "Reason": record["reason"],
            "Lanes": [int(lane) for lane in record.get("lanes", [])],
            "Record": json.dumps(record, separators=(",", ":"))}


def _fields_without_copies(event, select_clauses):
    """asyncua's Event.to_event_fields without its deep copy of every value for every subscriber (two thirds of an
    event's cost, measured): each value of a result event is a fresh object per result or never changed once set,
    so a subscriber's fields can share them."""
    from asyncua import ua

    fields = []
    for clause in select_clauses:
        name = (event.browse_path_to_attribute_name(clause.BrowsePath) if clause.BrowsePath
                else ua.AttributeIds(clause.AttributeId).name)
        value = getattr(event, name, None)
        fields.append(ua.Variant(None) if value is None else ua.Variant(value, event.data_types[name]))
    return fields


class VisionServer(VisionMethods):
    """The publisher of the `opcua` row (edge/served.py): `publish(sorted)`, `serve(host, port)`, `close()`."""

    def __init__(self, runner, access, certificate=None, private_key=None, grace_s=GRACE_S):
        self.runner, self.access, self.grace_s = runner, access, grace_s
        self.certificate, self.private_key = certificate, private_key
        self.dropped = self.sent = 0
        self.job = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        self.prepared = {}  # model path -> sha256 of recipes that passed PrepareRecipe
        self._stopping = False  # Halt was called: the current frame is being finished
        self._shown_state = self._state_lock = None  # what the state machine shows; one writer at a time
        self._event_model = self._shown_model = None  # the model named by the last result event / LiveModel
        self._loop = self._queue = self._thread = self._done = None
        logging.getLogger("asyncua").setLevel(logging.CRITICAL)  # its tracebacks and warnings; we say what matters

    # --- the sorting thread's side -------------------------------------------------------------------------------
    def publish(self, item):
        """Queue one decision for its ResultReady event (never waits on the server)."""
        loop = self._loop
        if loop is None:
            return
        decided = item.decision.bin if item.decision is not None else None
        try:  # the model that decided: a promotion swaps it between frames, never during one's publishing
            loop.call_soon_threadsafe(self._enqueue, (item.record, decided, item.decision is None, self.runner.model))
        except RuntimeError:  # the loop has closed: the server is gone
            self.dropped += 1

    def _enqueue(self, payload):
        if self._queue.qsize() >= QUEUE_MAX:
            self.dropped += 1
        else:
            self._queue.put_nowait(payload)

    # --- life cycle ----------------------------------------------------------------------------------------------
    def serve(self, host, port):
        """Load the types, bind and start serving in a daemon thread; OSError when the port cannot be served."""
        started = threading.Event()
        outcome = {}
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main(host, port, started, outcome)),
                                        name="opcua", daemon=True)
        self._thread.start()
        started.wait(120)
        if "error" in outcome:
            raise outcome["error"]
        if "url" not in outcome:
            raise OSError(f"the OPC UA server did not start on {host}:{port}")
        return f"opcua {outcome['url']}"

    def cpu_s(self):
        """CPU seconds the server's thread has used so far (Linux), for benchmarks/opcua_rate.py's cost per result."""
        return time.clock_gettime(time.pthread_getcpuclockid(self._thread.ident))

    def close(self):
        """Send what is queued, show Halted for `grace_s`, then stop the server."""
        loop, done = self._loop, self._done
        if loop is not None and done is not None:
            try:
                loop.call_soon_threadsafe(self._queue.put_nowait, None)
            except RuntimeError:
                pass
            self._thread.join(60 + self.grace_s)
        self._loop = None
        self.runner.events.emit("opcua", event="closed", results_sent=self.sent, results_dropped=self.dropped)

    async def _main(self, host, port, started, outcome):
        try:
            server = await self._build(host, port)
            await server.start()
        except Exception as error:  # a taken port, a bad certificate: the runner's one line
            outcome["error"] = error if isinstance(error, OSError) else OSError(f"{type(error).__name__}: {error}")
            started.set()
            return
        bound = server.bserver.port
        outcome["url"] = f"opc.tcp://{f'[{host}]' if ':' in host else host}:{bound}"
        self._queue, self._done = asyncio.Queue(), asyncio.Event()
        self._loop = asyncio.get_running_loop()
        started.set()
        watch = asyncio.create_task(self._watch())
        try:
            await self._pump()
            await self._show_state()  # the last state and alarms, now
            await self._set_alarms(self.runner.state()[2])
            await asyncio.sleep(self.grace_s)
        finally:
            watch.cancel()
            self._done.set()
            await server.stop()

    async def _build(self, host, port):
        from asyncua import Server, ua

        server = Server(user_manager=self.access)
        await server.init()
        server.set_server_name("mineralnet edge runner")
        server.set_endpoint(f"opc.tcp://{f'[{host}]' if ':' in host else host}:{port}")
        policies = [ua.SecurityPolicyType.NoSecurity]
        if self.certificate and self.private_key:
            await server.load_certificate(self.certificate)
            await server.load_private_key(self.private_key)
            policies += [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt, ua.SecurityPolicyType.Basic256Sha256_Sign]
        server.set_security_policy(policies, permission_ruleset=self.access)
        with gzip.open(NODESET, "rt", encoding="utf-8") as handle:
            await server.import_xml(xmlstring=handle.read())
        await server.load_data_type_definitions()
        self.mv = await server.get_namespace_index(MV_URI)
        idx = await server.register_namespace(URI)
        self.vision = await server.nodes.objects.add_object(idx, "VisionSystem",
                                                            objecttype=ua.NodeId(VISION_SYSTEM_TYPE, self.mv))
        await self._find_nodes()
        await self._recipe_nodes(server, idx)
        await self._alarm_nodes(server, idx)
        await self._result_type(server, idx)
        await self._link_methods(server)
        self._state_lock = asyncio.Lock()
        await self._show_state()
        return server

    async def _find_nodes(self):
        mv = self.mv
        machine = await self.vision.get_child(f"{mv}:VisionStateMachine")
        self.automatic = await machine.get_child(f"{mv}:AutomaticModeStateMachine")
        self.state_node = await machine.get_child("0:CurrentState")
        self.automatic_node = await self.automatic.get_child("0:CurrentState")
        self.recipes = await self.vision.get_child(f"{mv}:RecipeManagement")
        self.machine = machine

    async def _recipe_nodes(self, server, idx):
        self.last_problem = await self.recipes.add_variable(idx, "LastProblem", "")
        self.live_model = await self.recipes.add_variable(idx, "LiveModel", "")
        self.live_sha = await self.recipes.add_variable(idx, "LiveModelSha256", "")

    async def _alarm_nodes(self, server, idx):
        from asyncua import ua

        folder = await self.vision.add_folder(idx, "Alarms")
        self.alarm_nodes, self.alarm_bits = {}, 0
        self.alarm_event = await server.get_event_generator(ua.ObjectIds.AlarmConditionType, self.vision)
        for name, _, _, _ in ALARMS:
            node = await folder.add_object(idx, name, objecttype=ua.ObjectIds.AlarmConditionType)
            self.alarm_nodes[name] = node
            await self._write_child(node, "ActiveState", ua.LocalizedText("Inactive"))
            await self._write_child(node, "ActiveState/0:Id", False)
            await self._write_child(node, "ConditionName", name)

    async def _result_type(self, server, idx):
        from asyncua import ua

        etype = await server.create_custom_event_type(
            idx, "SortResultReadyEventType", ua.NodeId(RESULT_READY_TYPE, self.mv),
            [(name, getattr(ua.VariantType, kind)) for name, kind in RESULT_FIELDS])
        lanes = await etype.add_property(idx, "Lanes", [], varianttype=ua.VariantType.UInt16)
        await lanes.write_value_rank(1)
        self.result_event = await server.get_event_generator(etype, self.vision)
        event = self.result_event.event
        event.to_event_fields = types.MethodType(_fields_without_copies, event)
        event.JobId = ua.JobIdDataType(Id=self.job)
        event.InternalConfigurationId = ua.ConfigurationIdDataType(Id=self.runner.config.path or "")
        event.IsPartial = False
        event.Severity = 100
        # asyncua leaves these fields' variant types unknown (their data types are subtypes or structures of the
        # NodeSet2) and would send them empty: say them
        kinds = {"ResultState": "Int32", "CreationTime": "DateTime", "IsPartial": "Boolean",
                 "InternalRecipeId": "ExtensionObject", "InternalConfigurationId": "ExtensionObject"}
        event.data_types.update({name: getattr(ua.VariantType, kind) for name, kind in kinds.items()})

    @staticmethod
    async def _write_child(node, path, value):
        parts = [part if ":" in part else f"0:{part}" for part in path.split("/")]
        await (await node.get_child(parts)).write_value(value)

    # --- state and alarms ----------------------------------------------------------------------------------------
    async def _watch(self):
        while True:
            await self._show_state()
            await self._set_alarms(self.runner.state()[2])
            await self._show_model()  # a promotion from the page or a signal shows within POLL_S
            await asyncio.sleep(POLL_S)

    async def _show_model(self):
        model = self.runner.model
        if model is not self._shown_model:
            self._shown_model = model
            await self.live_model.write_value(model.path)
            await self.live_sha.write_value(model.sha256)

    def vision_state(self):
        return vision_state(self.runner, self._stopping)

    async def _show_state(self):
        """Show the runner's state if it changed: polled by the watch, and at once by a method that changes it, so
        the caller reads the new state when the call returns (a single job may be over before the next poll)."""
        async with self._state_lock:
            state = self.vision_state()
            if state != self._shown_state:
                await self._set_state(state)
                self._shown_state = state

    async def _set_state(self, state):
        from asyncua import ua

        top, automatic = state
        await self.state_node.write_value(ua.LocalizedText(top))
        await self._write_child(self.state_node, "Id", ua.NodeId(STATE_IDS[top], self.mv))
        text = ua.LocalizedText(automatic) if automatic else ua.LocalizedText()
        await self.automatic_node.write_value(text)
        await self._write_child(self.automatic_node, "Id", ua.NodeId(AUTOMATIC_IDS[automatic], self.mv)
                                if automatic else ua.NodeId())

    async def _set_alarms(self, bits):
        from asyncua import ua

        changed, self.alarm_bits = bits ^ self.alarm_bits, bits
        for name, bit, severity, message in ALARMS:
            if not changed & bit:
                continue
            active = bool(bits & bit)
            node = self.alarm_nodes[name]
            await self._write_child(node, "ActiveState", ua.LocalizedText("Active" if active else "Inactive"))
            await self._write_child(node, "ActiveState/0:Id", active)
            event = self.alarm_event.event
            event.ConditionName, event.Retain, event.Severity = name, active, severity
            event.ActiveState = ua.LocalizedText("Active" if active else "Inactive")
            setattr(event, "ActiveState/Id", active)
            event.SourceNode, event.NodeId = self.vision.nodeid, node.nodeid
            await self.alarm_event.trigger(message=message if active else f"cleared: {message}")

    # --- results -------------------------------------------------------------------------------------------------
    async def _pump(self):
        from asyncua import ua

        generator = self.result_event
        event = generator.event
        while True:
            payload = await self._queue.get()
            if payload is None:
                return
            record, decided, failed, model = payload
            if model is not self._event_model:
                self._event_model = model
                event.InternalRecipeId = ua.RecipeIdInternalDataType(Id=model.sha256, Description=ua.LocalizedText(
                    os.path.basename(model.path)))
            for name, value in result_fields(record, decided).items():
                setattr(event, name, value)
            event.ResultId = ua.ResultIdDataType(Id=f"{self.job}/{record['seq']}")
            event.ResultState = -1 if failed else int(record["reason"] == "confident")
            event.CreationTime = datetime.datetime.now(datetime.timezone.utc)
            await generator.trigger(message=f"{record['seq']}: {record.get('class')} -> {record['bin']}")
            self.sent += 1
            await asyncio.sleep(0)  # with a backlog, get() and trigger() never suspend: let publishes and reads run
