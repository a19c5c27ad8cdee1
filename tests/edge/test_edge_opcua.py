"""The OPC UA Machine Vision server (issue 27 point 1): a real asyncua client over 127.0.0.1 against a real run.

Every decision arrives as exactly one ResultReady event equal to the events log; the VisionStateMachine follows the
runner (Preoperational before the run, ContinuousExecution while sorting, Error while the source stalls, Halted
after); anonymous clients read but cannot write or call; the user with its password prepares a recipe, swaps the
model to it and halts the run; alarms are conditions; over the encrypted endpoint a trusted client certificate may
call methods, another may not.
"""

import asyncio
import contextlib
import json

import pytest

asyncua = pytest.importorskip("asyncua")
from asyncua import Client, ua  # noqa: E402

from edge.opcua import MV_URI, URI, VisionServer  # noqa: E402
from edge.opcua_access import Access  # noqa: E402

from helpers import HeldBackRun, belt_folder  # noqa: E402

PASSWORD = "belt-42"


def _items(events_path):
    with open(events_path) as handle:
        lines = [json.loads(line) for line in handle]
    return [{k: v for k, v in line.items() if k not in ("type", "time")} for line in lines if line["type"] == "item"]


class Collected:
    """asyncua subscription handler: events and data changes in arrival order."""

    def __init__(self):
        self.events, self.changes = [], []

    def event_notification(self, event):
        self.events.append(event)

    def datachange_notification(self, node, value, data):
        self.changes.append(value.Text if isinstance(value, ua.LocalizedText) else value)


class Vision:
    """The client's view: the VisionSystem's nodes by the specification's browse names."""

    def __init__(self, client):
        self.client = client

    async def find(self):
        self.mv = await self.client.get_namespace_index(MV_URI)
        self.idx = await self.client.get_namespace_index(URI)
        mv = self.mv
        self.system = await self.client.nodes.objects.get_child(f"{self.idx}:VisionSystem")
        self.machine = await self.system.get_child(f"{mv}:VisionStateMachine")
        self.automatic = await self.machine.get_child(f"{mv}:AutomaticModeStateMachine")
        self.recipes = await self.system.get_child(f"{mv}:RecipeManagement")
        self.result_type = await self.client.get_node(ua.NodeId(1024, mv)).get_child(
            f"{self.idx}:SortResultReadyEventType")
        return self

    async def state(self):
        top = (await (await self.machine.get_child("0:CurrentState")).read_value()).Text
        sub = (await (await self.automatic.get_child("0:CurrentState")).read_value()).Text
        return top, sub

    async def until(self, wanted, seconds=5.0):
        for _ in range(int(seconds / 0.05)):
            if await self.state() == wanted:
                return wanted
            await asyncio.sleep(0.05)
        return await self.state()


@contextlib.asynccontextmanager
async def operator(url, seen, results=True, alarms=True):
    """A session as the user with its password, subscribed into `seen` (Collected) to the VisionSystem's result
    and/or alarm events; yields its Vision."""
    client = Client(url)
    client.set_user("operator")
    client.set_password(PASSWORD)
    async with client:
        vision = await Vision(client).find()
        subscription = await client.create_subscription(20, seen)
        if alarms:
            await subscription.subscribe_events(vision.system, ua.NodeId(ua.ObjectIds.AlarmConditionType))
        if results:
            await subscription.subscribe_events(vision.system, vision.result_type)
        yield vision


async def _until(condition, seconds=10.0):
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)


def test_every_decision_is_one_result_ready_event_the_state_follows_the_runner_and_anonymous_only_reads(
        tmp_path, tiny_export, write_config, make_runner):
    folder = belt_folder(tmp_path, tiny_export, 6)
    # the held-back last frame stalls the source after 1.5 s: the state machine shows Error, the SourceAlarm trips
    runner, events_path = make_runner(write_config(source={"stall_timeout_s": 1.5}), tiny_export["int8"])
    server = VisionServer(runner, Access("operator", PASSWORD), grace_s=0.0)
    runner.publishers.append(server)
    address = server.serve("127.0.0.1", 0)
    assert address.startswith("opcua opc.tcp://127.0.0.1:")
    url = address.split(" ", 1)[1]

    async def scenario():
        loop = asyncio.get_running_loop()
        async with Client(url) as client:  # anonymous
            vision = await Vision(client).find()
            seen = Collected()
            subscription = await client.create_subscription(20, seen)
            await subscription.subscribe_events(vision.system, vision.result_type)
            await subscription.subscribe_data_change(await vision.machine.get_child("0:CurrentState"))
            assert await vision.state() == ("Preoperational", None)
            with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied"):
                await (await vision.recipes.get_child(f"{vision.idx}:LastProblem")).write_value("x")
            with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied"):
                await vision.automatic.call_method(f"{vision.mv}:Stop", ua.Variant(0, ua.VariantType.Int32),
                                                   ua.LocalizedText("anonymous"))
            held = await loop.run_in_executor(None, HeldBackRun, runner, folder, 4)  # mid-run: last frame held
            during = await vision.until(("Operational", "ContinuousExecution"))
            stalled = await vision.until(("Error", None))
            source_alarm = await (await vision.system.get_child(
                [f"{vision.idx}:Alarms", f"{vision.idx}:SourceAlarm", "0:ActiveState"])).read_value()
            summary = await loop.run_in_executor(None, held.finish)
            after = await vision.until(("Halted", None))
            await _until(lambda: len(seen.events) >= summary["items"])
            await asyncio.sleep(0.3)  # a duplicate would arrive now
            return during, stalled, source_alarm.Text, after, summary, seen

    try:
        during, stalled, source_alarm, after, summary, seen = asyncio.run(scenario())
    finally:
        server.close()
    assert during == ("Operational", "ContinuousExecution")
    assert stalled == ("Error", None) and source_alarm == "Active"
    assert after == ("Halted", None)
    assert summary["exit"] == "end of source" and summary["items"] == 6
    logged = _items(events_path)
    assert [json.loads(event.Record) for event in seen.events] == logged  # each once, in order, equal to the log
    for event, item in zip(seen.events, logged):
        assert (event.Seq, event.Class, event.Bin, event.Reason) == (item["seq"], item["class"], item["bin"],
                                                                      item["reason"])
        assert event.Confidence == pytest.approx(item["top3"][0]["p"])
        assert event.ResultId.Id.endswith(f"/{item['seq']}") and event.ResultState == (item["reason"] == "confident")
        assert event.InternalRecipeId.Id == runner.model.sha256
    assert seen.changes[0] == "Preoperational" and seen.changes[-1] == "Halted"
    assert seen.changes.index("Operational") < seen.changes.index("Error")
    assert server.sent == 6 and server.dropped == 0


def _certificates(tmp_path, names):
    """Self-signed application certificates NAME.der with keys NAME.pem, made by asyncua's own helper."""
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    async def make():
        for name in names:
            use = ExtendedKeyUsageOID.SERVER_AUTH if name == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
            await setup_self_signed_certificate(tmp_path / f"{name}.pem", tmp_path / f"{name}.der", f"urn:{name}",
                                                "localhost", [use], {"commonName": name})

    asyncio.run(make())


async def _prepare_encrypted(url, tmp_path, name, model_path):
    """PrepareRecipe over the Basic256Sha256 SignAndEncrypt endpoint as the client with certificate NAME."""
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

    client = Client(url)
    await client.set_security(SecurityPolicyBasic256Sha256, str(tmp_path / f"{name}.der"),
                              str(tmp_path / f"{name}.pem"), server_certificate=str(tmp_path / "server.der"),
                              mode=ua.MessageSecurityMode.SignAndEncrypt)
    async with client:
        vision = await Vision(client).find()
        try:
            return await vision.recipes.call_method(f"{vision.mv}:PrepareRecipe", ua.RecipeIdExternalDataType(
                Id=model_path), ua.RecipeIdInternalDataType(Id=""))
        except ua.UaStatusCodeError as refused:
            return type(refused).__name__


def test_methods_need_the_password_or_a_trusted_certificate_a_recipe_swaps_the_model_halt_ends_the_run_alarms(
        tmp_path, tiny_export, write_config, make_runner):
    folder = belt_folder(tmp_path, tiny_export, 3)
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"not a model")
    # every decision late (a short, fast belt): all to recheck, so the recheck alarm (window 2) trips
    config = write_config(belt={"speed_mm_s": 1000.0, "camera_to_ejector_mm": 0.001, "valve_lead_ms": 0.0},
                          alarm={"window": 2, "max_recheck_share": 0.5})
    runner, events_path = make_runner(config, tiny_export["int8"])
    _certificates(tmp_path, ("server", "trusted", "stranger"))
    server = VisionServer(runner, Access("operator", PASSWORD, [str(tmp_path / "trusted.der")]),
                          str(tmp_path / "server.der"), str(tmp_path / "server.pem"), grace_s=0.0)
    runner.publishers.append(server)
    url = server.serve("127.0.0.1", 0).split(" ", 1)[1]

    async def scenario():
        loop = asyncio.get_running_loop()
        by_certificate = [await _prepare_encrypted(url, tmp_path, name, tiny_export["int8"])
                          for name in ("stranger", "trusted")]
        wrong = Client(url)
        wrong.set_user("operator")
        wrong.set_password("guess")
        with pytest.raises(ua.UaStatusCodeError, match="BadUserAccessDenied"):
            await wrong.connect()
        seen = Collected()
        async with operator(url, seen) as vision:

            async def prepare(path):
                return await vision.recipes.call_method(
                    f"{vision.mv}:PrepareRecipe", ua.RecipeIdExternalDataType(Id=path),
                    ua.RecipeIdInternalDataType(Id=""))

            good = await prepare(tiny_export["float32"])
            bad = await prepare(str(broken))
            problem = await (await vision.recipes.get_child(f"{vision.idx}:LastProblem")).read_value()
            unprepared = await vision.automatic.call_method(f"{vision.mv}:StartContinuous", *_start_arguments(
                str(broken)))
            with pytest.raises(ua.UaStatusCodeError, match="BadInvalidState"):  # single jobs start from Ready only
                await vision.automatic.call_method(f"{vision.mv}:StartSingleJob", *_start_arguments(""))
            from edge.sources import Capture, FolderSource

            capture = Capture(FolderSource(folder, runner.clock, loop=True), runner.clock, runner.events)
            sorting = loop.run_in_executor(None, runner.run, capture)
            await _until(lambda: runner.tally.items >= 4)
            swap = await vision.automatic.call_method(f"{vision.mv}:StartContinuous", *_start_arguments(
                tiny_export["float32"]))
            swapped_at = runner.tally.items
            await _until(lambda: runner.tally.items >= swapped_at + 3)
            stop = await vision.machine.call_method(f"{vision.mv}:Halt", ua.Variant(7, ua.VariantType.Int32),
                                                    ua.LocalizedText("shift end"))
            summary = await asyncio.wait_for(sorting, 30)
            await _until(lambda: len([e for e in seen.events if hasattr(e, "Seq")]) >= summary["items"])
            await _until(lambda: any(getattr(e, "ConditionName", None) == "RecheckAlarm" for e in seen.events))
            live = await (await vision.recipes.get_child(f"{vision.idx}:LiveModel")).read_value()
            return by_certificate, good, bad, problem, unprepared, swap, stop, summary, seen, live

    try:
        by_certificate, good, bad, problem, unprepared, swap, stop, summary, seen, live = asyncio.run(scenario())
    finally:
        server.close()
    assert by_certificate[0] == "BadUserAccessDenied"  # an untrusted certificate only reads
    assert by_certificate[1][0].Id != runner.model.sha256 and by_certificate[1][1:] == [True, 0]  # the int8 recipe
    float32_sha = runner.model.sha256
    assert good[0].Id == float32_sha and good[1:] == [True, 0]
    assert bad[1:] == [True, 1] and "broken.tflite" in problem
    assert unprepared[1] == 4  # a recipe not prepared is not swapped in
    assert swap[1] == 0 and runner.model.path == tiny_export["float32"] == live
    assert summary["model_sha256"] == float32_sha
    assert stop == 0 and summary["exit"] == "opcua Halt: shift end"
    results = [e for e in seen.events if hasattr(e, "Seq")]
    assert [e.Seq for e in results] == list(range(1, summary["items"] + 1))
    assert results[0].InternalRecipeId.Id != float32_sha and results[-1].InternalRecipeId.Id == float32_sha
    alarm = [e for e in seen.events if getattr(e, "ConditionName", None) == "RecheckAlarm"][0]
    assert alarm.ActiveState.Text == "Active" and alarm.Retain is True and summary["alarms"] >= 1
    with open(events_path) as handle:
        lines = [json.loads(line) for line in handle]
    audit = [line["event"] for line in lines if line["type"] == "opcua"]
    assert audit == ["prepare_recipe"] * 3 + ["start_continuous", "start_single_job", "start_continuous", "halt",
                                              "closed"]
    assert [line["type"] for line in lines if line["type"].startswith("model_")] == ["model_promoted"]


def _start_arguments(model_path):
    return (ua.MeasIdDataType(Id="m1"), ua.PartIdDataType(Id="p1"), ua.RecipeIdExternalDataType(Id=model_path),
            ua.ProductIdDataType(Id="ore"), ua.Variant([], ua.VariantType.ExtensionObject))


@pytest.mark.parametrize("content", [None, ""])
def test_a_password_file_that_cannot_be_used_stops_the_runner_in_one_line(tmp_path, capsys, content):
    from edge.runner import parse_args

    path = tmp_path / "password"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as stopped:
        parse_args(["--model", "m.tflite", "--source", "folder:x", "--config", "c.toml", "--opcua-port", "0",
                    "--opcua-password-file", str(path)])
    error = capsys.readouterr().err.splitlines()[-1]
    assert stopped.value.code == 2 and "--opcua-password-file" in error and str(path) in error
    assert ("pass a file holding the password" if content is None else "write the password on it") in error
