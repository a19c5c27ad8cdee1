"""A candidate model beside the live one (edge/shadow.py) and swapping the live model without a restart
(edge/promotion.py, Sorter.promote / rollback), with the real tiny exported models: the int8 file decides, the
float32 file of the same run is the candidate (same labels, other probabilities)."""

import json
import os
import re
import shutil

import numpy as np
import pytest

from edge.decision import Decider
from edge.model import Model, ModelError
from edge.preprocess import open_rgb
from edge.shadow import Shadow
from edge.sources import Capture, FolderSource, Frame


def read_events(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def _frames(tiny_export, count, clock):
    rows = tiny_export["test_rows"][:count]
    return [Frame(f"{n:03d}_{row['path']}", clock.now(), open_rgb(row["file"])) for n, row in enumerate(rows)]


def _top3(model, image):
    """The top-3 a model gives one whole picture, as an item record spells it (the item's crop is the picture)."""
    probabilities = model.classify(model.input_tensor(image))
    order = np.argsort(-probabilities, kind="stable")[:3]
    return [{"label": model.labels[i], "p": round(float(probabilities[i]), 6)} for i in order]


def _other_classes(tmp_path, tiny_export):
    """The float32 model with a sidecar that renames its last class: a valid model of other classes."""
    path = tmp_path / "renamed.tflite"
    shutil.copy(tiny_export["float32"], path)
    with open(tiny_export["float32"][: -len(".tflite")] + ".json") as handle:
        sidecar = json.load(handle)
    sidecar["labels"] = sidecar["labels"][:-1] + ["pyrite_new"]
    (tmp_path / "renamed.json").write_text(json.dumps(sidecar))
    return str(path)


def test_promote_then_rollback_switch_the_deciding_model_between_frames(
        tmp_path, tiny_export, write_config, make_runner, fake_clock, capsys):
    runner, events_path = make_runner(write_config(), tiny_export["int8"], clock=fake_clock)
    frames = _frames(tiny_export, 9, fake_clock)
    live, candidate = Model(tiny_export["int8"]), Model(tiny_export["float32"])
    expected = [_top3(model, frame.image) for model, frame in zip([live] * 3 + [candidate] * 3 + [live] * 3, frames)]
    assert expected[3:6] != [_top3(live, frame.image) for frame in frames[3:6]]  # the two models tell apart
    for frame in frames[:3]:
        runner.process(frame)
    promoted = runner.promote(tiny_export["float32"])
    assert promoted.path == tiny_export["float32"] and runner.model is promoted
    for frame in frames[3:6]:
        runner.process(frame)
    assert runner.rollback().path == tiny_export["int8"]
    for frame in frames[6:]:
        runner.process(frame)
    with pytest.raises(ModelError, match="nothing to roll back to"):
        runner.rollback()
    runner.actuator.close()

    events = read_events(events_path)
    kinds = [e["type"] for e in events if e["type"] != "item"]
    assert kinds == ["model_promoted", "model_rolled_back", "model_refused"]
    items = [e for e in events if e["type"] == "item"]
    assert [e["frame"] for e in items] == [f.frame_id for f in frames]  # no frame lost, none twice
    assert [e["seq"] for e in items] == list(range(1, 10))
    assert [e["top3"] for e in items] == expected  # int8, then float32, then int8 again decided
    order = [e["type"] if e["type"] != "item" else e["frame"][:3] for e in events]
    assert order[:4] == ["000", "001", "002", "model_promoted"] and order[7] == "model_rolled_back"
    swap = next(e for e in events if e["type"] == "model_promoted")
    assert swap["model_sha256"] == candidate.sha256 and swap["replaced_sha256"] == live.sha256
    err = capsys.readouterr().err.splitlines()
    assert [line.split(" model ")[0] for line in err[:2]] == ["runner: promoted", "runner: rolled back to"]
    summary = runner.summary(runner.capture or type("C", (), {"dropped": 0, "source_errors": 0})(), "test")
    assert (summary["promotions"], summary["rollbacks"], summary["model"]) == (1, 1, tiny_export["int8"])


def test_a_candidate_with_other_classes_is_refused_and_live_sorts_on(
        tmp_path, tiny_export, write_config, make_runner, fake_clock, capsys):
    runner, events_path = make_runner(write_config(), tiny_export["int8"], clock=fake_clock)
    frames = _frames(tiny_export, 2, fake_clock)
    runner.process(frames[0])
    renamed = _other_classes(tmp_path, tiny_export)
    with pytest.raises(ModelError) as refused:
        runner.promote(renamed)
    message = str(refused.value)
    assert "\n" not in message and renamed in message and "pyrite_new" in message and "restart" in message
    assert runner.model.path == tiny_export["int8"]
    runner.process(frames[1])
    runner.actuator.close()
    events = read_events(events_path)
    assert [e["type"] for e in events] == ["item", "model_refused", "item"]
    assert capsys.readouterr().err.strip() == f"runner: promote refused: {message}"


def _folder(tmp_path, tiny_export, count):
    folder = tmp_path / "belt"
    folder.mkdir()
    for n, row in enumerate(tiny_export["test_rows"][:count]):
        shutil.copy(row["file"], folder / f"{n:03d}.png")
    return str(folder)


def _half_sure(tmp_path, model_path, folder):
    """The model with a calibrated cutoff at the median top probability of the folder's pictures: about half of
    them go to recheck, so it disagrees with the live model on some items and agrees on others."""
    model = Model(model_path)
    top = sorted(float(model.classify(model.input_tensor(open_rgb(os.path.join(folder, name)))).max())
                 for name in os.listdir(folder))
    with open(model.sidecar_path) as handle:
        sidecar = json.load(handle)
    cutoff = (top[len(top) // 2 - 1] + top[len(top) // 2]) / 2
    sidecar["reject"] = {"method": "split_conformal", "alpha": 0.1, "qhat": 1.0 - cutoff, "n": 13,
                         "score": "1 - p_true"}
    path = tmp_path / "half_sure.tflite"
    shutil.copy(model_path, path)
    (tmp_path / "half_sure.json").write_text(json.dumps(sidecar))
    return str(path)


def test_the_shadows_agreement_equals_a_direct_comparison(tmp_path, tiny_export, write_config, make_runner):
    runner, events_path = make_runner(write_config(), tiny_export["int8"])
    folder = _folder(tmp_path, tiny_export, 12)  # fewer frames than the queue holds: none can be dropped
    candidate = Model(_half_sure(tmp_path, tiny_export["float32"], folder))
    report_path = str(tmp_path / "shadow.json")
    shadow = Shadow(candidate, runner.config, runner.events, report_path=report_path)
    runner.attach_shadow(shadow)
    summary = runner.run(Capture(FolderSource(folder, runner.clock), runner.clock, runner.events))

    live_model, config = Model(tiny_export["int8"]), runner.config
    deciders = [Decider(m.labels, config.bins, m.reject, config.decision.confidence_threshold)
                for m in (live_model, candidate)]
    pairs = []
    for name in sorted(os.listdir(folder)):
        image = open_rgb(os.path.join(folder, name))
        pairs.append([d.decide(m.classify(m.input_tensor(image))) for d, m in zip(deciders, (live_model, candidate))])
    report = summary["shadow"]
    assert 0 < report["agreement"] < 1  # both kinds of item are there
    assert (report["offered"], report["compared"], report["dropped"], report["not_sampled"]) == (12, 12, 0, 0)
    assert report["agreement"] == pytest.approx(sum(a.bin == b.bin for a, b in pairs) / 12)
    assert report["class_agreement"] == pytest.approx(sum(a.label == b.label for a, b in pairs) / 12)
    expected = {}
    for a, b in pairs:
        expected.setdefault(a.label, {}).setdefault(b.label, 0)
        expected[a.label][b.label] += 1
    assert report["confusion"] == expected
    assert report["recheck_share"] == pytest.approx({
        "live": sum(a.bin == "recheck" for a, _ in pairs) / 12, "shadow": sum(b.bin == "recheck" for _, b in pairs) / 12})
    assert all(report["latency_ms"][q] > 0 for q in ("p50", "p95", "p99")) and report["state"] == "stopped"

    events = read_events(events_path)
    items = {e["seq"]: e for e in events if e["type"] == "item"}
    beside = [e for e in events if e["type"] == "shadow"]
    assert sorted(e["seq"] for e in beside) == sorted(items) and len(items) == 12
    for entry, (live, mine) in zip(sorted(beside, key=lambda e: e["seq"]), pairs):
        assert entry["live"] == {"class": items[entry["seq"]]["class"], "bin": live.bin}
        assert (entry["shadow"]["class"], entry["shadow"]["bin"], entry["agree"]) == (mine.label, mine.bin,
                                                                                     mine.bin == live.bin)
    with open(report_path) as handle:
        assert json.load(handle) == report  # the report file is the summary's, written at the end
    markdown = (tmp_path / "shadow.md").read_text()
    assert f"| compared | 12 |" in markdown and "| live \\ candidate |" in markdown
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_a_slow_shadow_drops_frames_and_never_holds_up_a_live_decision(
        tmp_path, tiny_export, write_config, make_runner, fake_clock):
    """The child is not started (frames sorted without run()): a candidate as slow as can be. The queue holds 2
    frames; every other frame is dropped and counted, and every live decision is made and published."""
    runner, events_path = make_runner(write_config(), tiny_export["int8"], clock=fake_clock)
    shadow = Shadow(Model(tiny_export["float32"]), runner.config, runner.events, every=1, queue_frames=2,
                    report_path=str(tmp_path / "shadow.json"))
    runner.attach_shadow(shadow)
    frames = _frames(tiny_export, 8, fake_clock)
    for frame in frames:
        runner.process(frame)
    assert shadow._jobs.qsize() == 2 and (shadow.offered, shadow.dropped, shadow.compared) == (8, 6, 0)
    assert [e["frame"] for e in read_events(events_path) if e["type"] == "item"] == [f.frame_id for f in frames]

    promoted = runner.promote()  # no path: the shadow's candidate; the shadow ends, having compared its queue
    assert promoted.path == tiny_export["float32"] and promoted is not shadow.model  # its own interpreter
    report = shadow.report()
    assert (report["state"], report["compared"], report["dropped"]) == ("promoted", 2, 6)
    assert json.loads((tmp_path / "shadow.json").read_text())["state"] == "promoted"
    runner.process(frames[0])
    runner.actuator.close()
    assert shadow.offered == 8  # a promoted shadow is offered nothing more
    with pytest.raises(ModelError, match="no candidate to promote"):
        runner.promote()


def test_two_promotions_at_once_promote_once(tmp_path, tiny_export, write_config, make_runner, fake_clock):
    """The button pressed twice, or a signal beside it: the second waits for the first, then finds no candidate."""
    import threading
    import time

    runner, events_path = make_runner(write_config(), tiny_export["int8"], clock=fake_clock)
    runner.attach_shadow(Shadow(Model(tiny_export["float32"]), runner.config, runner.events))
    outcomes, start = [], threading.Barrier(2)

    def press():
        start.wait()
        try:
            outcomes.append(runner.promote().path)
        except ModelError as error:
            outcomes.append(str(error))

    pressing = [threading.Thread(target=press) for _ in range(2)]
    with runner.switch.lock:  # a frame being sorted: both presses load and check while it lasts
        for thread in pressing:
            thread.start()
        time.sleep(1.0)
    for thread in pressing:
        thread.join(60)
    runner.actuator.close()
    promoted = [o for o in outcomes if o == tiny_export["float32"]]
    refused = [o for o in outcomes if o.startswith("no candidate to promote")]
    assert len(promoted) == len(refused) == 1
    assert [e["type"] for e in read_events(events_path)] == ["model_promoted", "model_refused"]
    assert runner.switch.promotions == 1 and [m.path for m in runner.switch.previous] == [tiny_export["int8"]]


def test_every_nth_frame_only(tmp_path, tiny_export, write_config, make_runner, fake_clock):
    runner, _ = make_runner(write_config(), tiny_export["int8"], clock=fake_clock)
    shadow = Shadow(Model(tiny_export["float32"]), runner.config, runner.events, every=3)
    runner.attach_shadow(shadow)
    for frame in _frames(tiny_export, 7, fake_clock):
        runner.process(frame)
    shadow.close()
    runner.actuator.close()
    assert (shadow.offered, shadow.compared, shadow.not_sampled, shadow.dropped) == (7, 3, 4, 0)  # frames 1, 4, 7


def test_prometheus_and_the_page_show_the_shadow_and_the_page_swaps_with_the_token(
        tmp_path, tiny_export, write_config, make_runner, fake_clock):
    import urllib.error
    import urllib.parse
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from edge.telemetry import Telemetry
    from edge.ui import LineUI

    runner, events_path = make_runner(write_config(), tiny_export["int8"], clock=fake_clock)
    shadow = Shadow(Model(tiny_export["float32"]), runner.config, runner.events)
    runner.attach_shadow(shadow)
    telemetry = Telemetry(runner.model)
    runner.attach_telemetry(telemetry)
    metrics = telemetry.serve("127.0.0.1", 0).split(" ", 1)[1]
    ui = LineUI(runner, "s3cret")
    base = ui.serve("127.0.0.1", 0).split(" ", 1)[1]

    def request(path, data=None, headers=None):
        try:
            with urllib.request.urlopen(urllib.request.Request(base + path, data, headers or {}), timeout=30) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    try:
        for frame in _frames(tiny_export, 5, fake_clock):
            runner.process(frame)
        shadow.start()
        shadow.wait_idle()
        report = shadow.report()
        assert report["compared"] == 5
        with urllib.request.urlopen(metrics, timeout=10) as answer:
            families = {f.name: f for f in text_string_to_metric_families(answer.read().decode())}
        items = {s.labels["outcome"]: s.value for s in families["mineralnet_runner_shadow_items"].samples}
        assert items == {"compared": 5, "dropped": 0, "not_sampled": 0, "errors": 0}
        assert families["mineralnet_runner_shadow_failures"].samples[0].value == report["failures"] == 0
        assert families["mineralnet_runner_shadow_agreement"].samples[0].value == report["agreement"]
        confusion = {(s.labels["live"], s.labels["shadow"]): s.value
                     for s in families["mineralnet_runner_shadow_confusion"].samples}
        assert confusion == {(a, b): n for a, row in report["confusion"].items() for b, n in row.items()}
        latency = {s.labels["quantile"]: s.value for s in families["mineralnet_runner_shadow_latency_seconds"].samples}
        assert latency == pytest.approx({q: ms / 1000 for q, ms in report["latency_ms"].items()})

        code, status = request("api/status")
        assert code == 200 and json.loads(status)["shadow"] == report
        code, page = request("")
        assert code == 200 and 'data-key="shadow.agreement"' in page and 'id="confusion"' in page
        assert 'action="/model/promote"' in page

        assert request("model/promote", b"", {"X-Token": "wrong"})[0] == 403
        assert runner.model.path == tiny_export["int8"]
        code, answer = request("model/promote", b"", {"X-Token": "s3cret"})
        assert code == 200 and json.loads(answer)["model"] == tiny_export["float32"] == runner.model.path
        with urllib.request.urlopen(metrics, timeout=10) as answer:
            text = answer.read().decode()
        assert runner.model.sha256 in text  # mineralnet_runner_model_info follows the swap
        code, page = request("model/rollback", urllib.parse.urlencode({"token": "s3cret"}).encode())
        assert code == 200 and "<html" in page and runner.model.path == tiny_export["int8"]  # the form: back to /
        code, answer = request("model/rollback", b"", {"X-Token": "s3cret"})
        assert code == 409 and answer == ("rollback refused: nothing to roll back to: no model has been promoted "
                                          "since the runner started")
    finally:
        ui.close()
        telemetry.close()
        runner.actuator.close()
    kinds = [e["type"] for e in read_events(events_path) if e["type"].startswith("model_")]
    assert kinds == ["model_promoted", "model_rolled_back", "model_refused"]


def test_the_cli_promotes_on_sigusr1_and_rolls_back_on_sigusr2_and_refuses_other_classes(
        tmp_path, tiny_export, write_config):
    import signal
    import subprocess
    import sys

    from helpers import REPO

    runner = [sys.executable, os.path.join(REPO, "edge", "runner.py"), "--model", tiny_export["int8"],
              "--source", f"folder:{_folder(tmp_path, tiny_export, 4)}", "--config",
              write_config(source={"loop": True}), "--threads", "1"]
    refused = subprocess.run(runner + ["--shadow", _other_classes(tmp_path, tiny_export)], capture_output=True,
                             text=True, timeout=60)
    said = [line for line in refused.stderr.splitlines() if not line.startswith("INFO: ")]  # LiteRT's own
    assert refused.returncode == 2 and len(said) == 1 and said[0].startswith("runner: candidate model ")
    assert "pyrite_new" in said[0] and not (tmp_path / "summary.json").exists()

    process = subprocess.Popen(runner + ["--shadow", tiny_export["float32"]], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in process.stdout:  # events on stdout: promote after the first item, roll back after the swap
            seen.append(json.loads(line))
            if seen[-1]["type"] == "item" and seen[-1]["seq"] == 1:
                process.send_signal(signal.SIGUSR1)
            if seen[-1]["type"] == "model_promoted":
                process.send_signal(signal.SIGUSR2)
            if seen[-1]["type"] == "model_rolled_back":
                process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    kinds = [e["type"] for e in seen if e["type"].startswith("model_")]
    assert kinds == ["model_promoted", "model_rolled_back"]
    assert re.search(r"^runner: promoted model '.*model_float32.tflite' sha256 ", stderr, re.MULTILINE)
    assert re.search(r"^runner: rolled back to model '.*model_int8.tflite' sha256 ", stderr, re.MULTILINE)
    items = [e for e in seen if e["type"] == "item"]
    assert [e["seq"] for e in items] == list(range(1, len(items) + 1))  # no frame lost across the swaps
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["promotions"], summary["rollbacks"], summary["items"]) == (1, 1, len(items))
    assert summary["shadow"]["state"] == "promoted" and summary["model"] == tiny_export["int8"]
    assert json.loads((tmp_path / "summary.shadow.json").read_text()) == summary["shadow"]


def test_on_a_belt_every_particle_of_a_frame_is_compared(tmp_path, tiny_export, write_config, make_runner,
                                                         fake_clock):
    from PIL import Image

    from test_edge_belt import BELT, _discs, _particle_config

    runner, events_path = make_runner(_particle_config(write_config, tiny_export), tiny_export["int8"],
                                      clock=fake_clock)
    shadow = Shadow(Model(tiny_export["float32"]), runner.config, runner.events)
    runner.attach_shadow(shadow)
    runner.process(Frame("empty", fake_clock.now(), Image.fromarray(BELT)))  # the belt learned: nothing offered
    runner.process(Frame("A", fake_clock.now(), _discs([(200, 180, 12.0), (320, 120, 16.0), (450, 240, 10.0)])))
    shadow.close()
    runner.actuator.close()
    events = read_events(events_path)
    particles = {e["seq"]: e for e in events if e["type"] == "particle"}
    beside = {e["seq"]: e for e in events if e["type"] == "shadow"}
    assert len(particles) == 3 and sorted(beside) == sorted(particles)
    assert all(beside[seq]["live"] == {"class": particles[seq]["class"], "bin": particles[seq]["decided"]}
               for seq in particles)
    assert (shadow.offered, shadow.compared, shadow.report()["compared"]) == (3, 3, 3)


def test_a_killed_candidate_process_is_reported_and_live_sorts_on(
        tmp_path, tiny_export, write_config, make_runner, fake_clock, capsys):
    """The candidate runs in a child process (edge/shadow_worker.py); killed mid-run, it is one stderr line, a
    shadow_failed event, the state "failed" and failures 1; its items and every later one count as errors, and
    every live decision is made and published."""
    import signal
    import time

    runner, events_path = make_runner(write_config(), tiny_export["int8"], clock=fake_clock)
    report_path = tmp_path / "shadow.json"
    shadow = Shadow(Model(tiny_export["float32"]), runner.config, runner.events, report_path=str(report_path))
    runner.attach_shadow(shadow)
    frames = _frames(tiny_export, 8, fake_clock)
    shadow.start()
    for frame in frames[:3]:
        runner.process(frame)
    assert shadow.wait_idle() and shadow.compared == 3 and shadow.state == "running"
    child = shadow.pid
    os.kill(child, signal.SIGKILL)
    for frame in frames[3:5]:  # offered while the runner has not yet seen the child die: lost with it
        runner.process(frame)
    deadline = time.monotonic() + 10
    while shadow.state != "failed" and time.monotonic() < deadline:
        time.sleep(0.02)
    for frame in frames[5:]:  # offered to a failed shadow: counted as errors, never queued
        runner.process(frame)
    with pytest.raises(ModelError, match="failed in its process"):
        runner.promote()  # what crashed its process is not swapped in live
    shadow.close()
    runner.actuator.close()

    report = shadow.report()
    assert (report["state"], report["failures"], report["offered"], report["compared"], report["errors"],
            report["dropped"]) == ("failed", 1, 8, 3, 5, 0)
    events = read_events(events_path)
    assert [e["frame"] for e in events if e["type"] == "item"] == [f.frame_id for f in frames]
    assert len([e for e in events if e["type"] == "shadow"]) == 3
    failed = [e for e in events if e["type"] == "shadow_failed"]
    assert len(failed) == 1 and failed[0]["error"] == f"its process exited with code -{signal.SIGKILL}"
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("runner: ")]
    assert said == [f"runner: shadow candidate '{tiny_export['float32']}' failed (its process exited with code "
                    f"-{signal.SIGKILL}); the live model sorts on, the candidate compares nothing more until the "
                    "runner is restarted.", f"runner: promote refused: the shadow candidate '{tiny_export['float32']}' "
                    "failed in its process (the shadow_failed event says why): run it as --shadow again and promote "
                    "it once it compares"]
    assert json.loads(report_path.read_text()) == report
    assert not _running(child) and not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def _descendants(pid):
    """The process ids below `pid` (Linux /proc)."""
    children = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def _running(pid):
    """True while `pid` exists and is not a zombie (a container's init may never reap an orphan's)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigterm_ends_the_runner_and_its_candidate_process_cleanly(tmp_path, tiny_export, write_config):
    """SIGTERM to the runner while its candidate compares: exit 0, the shadow's report final ("stopped"), the child
    ended through its queue (no failure), no process left behind and no temp file."""
    import signal
    import subprocess
    import sys
    import threading
    import time

    from helpers import REPO

    process = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "edge", "runner.py"), "--model", tiny_export["int8"], "--source",
         f"folder:{_folder(tmp_path, tiny_export, 4)}", "--config", write_config(source={"loop": True, "fps": 20}),
         "--threads", "1", "--shadow", tiny_export["float32"]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(90, process.kill)  # a runner that never ends fails the test instead of hanging it
    watchdog.start()
    try:
        seen, below = [], []
        for line in process.stdout:
            seen.append(json.loads(line))
            if seen[-1]["type"] == "shadow" and not below:
                below = _descendants(process.pid)  # the child (and multiprocessing's resource tracker)
                process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        watchdog.cancel()
        process.kill()
    assert process.returncode == 0, stderr
    child = next(e["pid"] for e in seen if e["type"] == "shadow_started")
    assert child in below and "runner: shadow" not in stderr
    deadline = time.monotonic() + 10
    while [pid for pid in below if _running(pid)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in below if _running(pid)]
    summary = json.loads((tmp_path / "summary.json").read_text())
    report = summary["shadow"]
    assert (report["state"], report["failures"], report["errors"]) == ("stopped", 0, 0)
    assert report["compared"] + report["dropped"] == report["offered"] == summary["items"]
    assert json.loads((tmp_path / "summary.shadow.json").read_text()) == report
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
