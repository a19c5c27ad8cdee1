"""The runner end to end with a real tiny exported model: CLI, parity with Keras, timing, faults, signals."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np

from edge.preprocess import open_rgb
from edge.runner import main
from edge.sources import Capture, FolderSource, Frame

from helpers import REPO, runner_modules

RUNNER = os.path.join(REPO, "edge", "runner.py")


def _lines(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def _belt_folder(tmp_path, tiny_export, count=8):
    """A folder of `count` dataset images, one corrupt .jpg and a non-image file."""
    folder = tmp_path / "belt"
    folder.mkdir()
    names = []
    for row in tiny_export["test_rows"][:count]:
        names.append(f"{row['label']}_{os.path.basename(row['file'])}")
        shutil.copy(row["file"], folder / names[-1])
    (folder / "zz_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 a truncated upload, not a picture")
    (folder / "notes.txt").write_text("not an image: ignored")
    return folder, sorted(names)


def test_folder_source_through_the_cli(tmp_path, tiny_export, write_config):
    folder, names = _belt_folder(tmp_path, tiny_export)
    events_path = tmp_path / "events.jsonl"
    result = subprocess.run(
        [sys.executable, RUNNER, "--model", tiny_export["int8"], "--source", f"folder:{folder}",
         "--config", write_config(), "--events", str(events_path), "--threads", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    events = _lines(events_path)
    items = [e for e in events if e["type"] == "item"]
    assert [e["frame"] for e in items] == names  # one event per image, in sorted order
    assert [e["frame"] for e in events if e["type"] == "skipped"] == ["zz_corrupt.jpg"]
    for item in items:
        probabilities = [entry["p"] for entry in item["top3"]]
        assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert item["class"] == item["top3"][0]["label"] and item["reason"] in ("confident", "uncertain")
        assert set(item["latency_ms"]) == {"capture", "segment", "preprocess", "inference", "total"}
        expected_bin = dict(zip(tiny_export["labels"], ["bin_a", "bin_a", "bin_c"])).get(item["class"], "mixed")
        assert item["bin"] == (expected_bin if item["reason"] == "confident" else "recheck")

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["exit"] == "end of source"
    assert summary["items"] == len(names) and summary["frames_skipped"] == 1 and summary["frames_dropped"] == 0
    assert sum(summary["per_class"].values()) == sum(summary["per_bin"].values()) == summary["items"]
    assert sum(summary["per_reason"].values()) == summary["items"]
    assert summary["recheck"] == summary["per_bin"].get("recheck", 0) == summary["per_reason"]["uncertain"]
    assert summary["late"] == summary["failed"] == 0
    commands = _lines(tmp_path / "commands.jsonl")
    # recheck gets no command: it is where items land when no valve fires
    assert [(c["frame"], c["bin"]) for c in commands] == [(e["frame"], e["bin"]) for e in items if e["bin"] != "recheck"]
    assert all(c["due_in_ms"] > 99_000 for c in commands)  # 1000 mm at 10 mm/s, minus the 20 ms lead


def test_runner_decides_like_keras(tmp_path, tiny_export, write_config, make_runner):
    folder = tmp_path / "test_rows"
    for row in tiny_export["test_rows"]:
        (folder / row["label"]).mkdir(parents=True, exist_ok=True)
        os.symlink(row["file"], folder / row["path"])
    runner, events_path = make_runner(write_config(), tiny_export["float32"])
    runner.run(Capture(FolderSource(str(folder), runner.clock), runner.clock, runner.events))
    decided = {e["frame"]: e for e in _lines(events_path) if e["type"] == "item"}
    keras = tiny_export["keras_test_probabilities"]
    assert len(decided) == len(tiny_export["test_rows"]) == len(keras)
    agree = 0
    for row, probabilities in zip(tiny_export["test_rows"], keras):
        item = decided[row["path"]]
        agree += item["class"] == tiny_export["labels"][int(np.argmax(probabilities))]
        assert abs(item["top3"][0]["p"] - float(np.max(probabilities))) < 1e-4
    assert agree / len(keras) >= 0.99


def _surest_image(tiny_export):
    """The test image the model is surest of, and a confidence threshold just below its top probability: it is
    then sorted confidently to a product bin and gets an eject command (the tiny model is never 80 % sure)."""
    top = np.max(tiny_export["keras_test_probabilities"], axis=1)
    best = int(np.argmax(top))
    return open_rgb(tiny_export["test_rows"][best]["file"]), {"confidence_threshold": round(float(top[best]) - 0.01, 4)}


def test_late_decisions_go_to_recheck_and_are_not_fired(tiny_export, write_config, make_runner, fake_clock, tmp_path):
    image, decision = _surest_image(tiny_export)  # command due 0.5 s - 0.1 s after capture
    belt = {"speed_mm_s": 1000.0, "camera_to_ejector_mm": 500.0, "valve_lead_ms": 100.0}
    runner, events_path = make_runner(write_config(belt=belt, decision=decision), tiny_export["float32"], clock=fake_clock)
    for frame_id, delay in (("on_time", 0.0), ("just_in_time", 0.4), ("late", 0.4001), ("very_late", 3.0)):
        frame = Frame(frame_id, fake_clock.now(), image)
        fake_clock.advance(delay)
        runner.process(frame)
    items = {e["frame"]: e for e in _lines(events_path) if e["type"] == "item"}
    assert items["late"]["reason"] == items["very_late"]["reason"] == "late"
    assert items["late"]["bin"] == items["very_late"]["bin"] == "recheck"
    assert items["on_time"]["reason"] != "late" and items["just_in_time"]["reason"] != "late"
    commands = _lines(tmp_path / "commands.jsonl")
    assert [(c["frame"], c["due_in_ms"]) for c in commands] == [("on_time", 400), ("just_in_time", 0)]
    assert runner.tally.per_reason["late"] == 2 and runner.tally.per_bin["recheck"] >= 2


def test_actuator_failure_counts_items_as_failed(tiny_export, write_config, make_runner, fake_clock):
    class UnpluggedValve:
        def open(self):
            raise OSError("no such device")

        def close(self):
            pass

    image, decision = _surest_image(tiny_export)
    runner, events_path = make_runner(
        write_config(decision=decision), tiny_export["float32"], clock=fake_clock, actuator_factory=UnpluggedValve
    )
    for number in range(3):
        runner.process(Frame(str(number), fake_clock.now(), image))
    events = _lines(events_path)
    assert [e["reason"] for e in events if e["type"] == "item"] == ["error"] * 3
    assert [e["bin"] for e in events if e["type"] == "item"] == ["recheck"] * 3
    assert len([e for e in events if e["type"] == "actuator_error"]) == 1  # the others wait out the backoff
    assert runner.tally.per_reason["error"] == 3


def test_uncertain_items_fill_a_bounded_review_queue_and_raise_the_alarm(
    tmp_path, tiny_export, write_config, make_runner, fake_clock, uncertain_model
):
    # qhat = 1 (too few calibration images for alpha): every class is plausible, every item is uncertain.
    config = write_config(alarm={"window": 4, "max_recheck_share": 0.5}, review={"max_items": 3})
    runner, events_path = make_runner(config, uncertain_model, clock=fake_clock)
    image = open_rgb(tiny_export["test_rows"][0]["file"])
    for number in range(8):
        fake_clock.advance(0.01)
        runner.process(Frame(f"frame_{number}", fake_clock.now(), image))
    events = _lines(events_path)
    items = [e for e in events if e["type"] == "item"]
    assert {e["reason"] for e in items} == {"uncertain"} and len(items[0]["prediction_set"]) == 4
    alarms = [e for e in events if e["type"] == "alarm"]
    assert len(alarms) == 1 and alarms[0]["recheck_share"] == 1.0  # once, not once per item
    review = sorted(os.listdir(tmp_path / "review"))
    assert len(review) == 6  # the newest 3 items, a JPEG and a JSON each; the oldest 5 were removed
    assert sorted({name.split(".")[0][-8:] for name in review}) == ["00000006", "00000007", "00000008"]
    record = json.loads((tmp_path / "review" / review[-1]).read_text())
    assert record["frame"] == "frame_7" and record["model_sha256"] == runner.model.sha256


def test_sigterm_mid_run_writes_summary(tmp_path, tiny_export, write_config):
    folder, _ = _belt_folder(tmp_path, tiny_export, count=4)
    process = subprocess.Popen(
        [sys.executable, RUNNER, "--model", tiny_export["float32"], "--source", f"folder:{folder}",
         "--config", write_config(source={"loop": True})],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        for line in process.stdout:  # events go to stdout: wait for the first sorted item, then stop the runner
            if json.loads(line)["type"] == "item":
                break
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["exit"] == "SIGTERM" and summary["items"] >= 1
    assert json.loads(stdout.strip().splitlines()[-1])["type"] == "stop"


def test_runner_never_imports_tensorflow_keras_or_mineralnet(tmp_path, tiny_export, write_config):
    folder, names = _belt_folder(tmp_path, tiny_export, count=3)
    argv = [RUNNER, "--model", tiny_export["int8"], "--source", f"folder:{folder}", "--config", write_config(),
            "--events", str(tmp_path / "events.jsonl")]
    modules = runner_modules(argv, tmp_path)
    assert "edge.model" in modules and "ai_edge_litert.interpreter" in modules  # the run really happened
    assert [m for m in modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras", "mineralnet")] == []
    assert len([e for e in _lines(tmp_path / "events.jsonl") if e["type"] == "item"]) == len(names)


def _refusal(capsys, argv):
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("runner: ")
    return error


def test_a_contact_model_that_cannot_be_used_stops_the_runner_before_sorting(tmp_path, tiny_export, write_config,
                                                                              capsys):
    missing = str(tmp_path / "contact.tflite")
    config = write_config(particles={"mm_per_px": 0.5, "contact_model": missing},
                          valves={"count": 32, "lane_mm": 20.0, "bin": "bin_a"})
    error = _refusal(capsys, ["--model", tiny_export["float32"], "--source", f"folder:{tmp_path}", "--config", config])
    assert f"contact model '{missing}' not found" in error and "[particles] contact_model" in error


def test_model_and_sidecar_that_disagree_are_refused(tmp_path, tiny_export, write_config, capsys):
    config = write_config()
    base = ["--source", f"folder:{tmp_path}", "--config", config]
    float_sidecar = tiny_export["float32"][: -len(".tflite")] + ".json"

    error = _refusal(capsys, ["--model", tiny_export["int8"], "--sidecar", float_sidecar, *base])
    assert "sha256" in error and "--sidecar" in error

    sidecar = json.loads(open(float_sidecar).read())
    (tmp_path / "extra_label.json").write_text(json.dumps({**sidecar, "labels": sidecar["labels"] + ["slag"]}))
    extra = str(tmp_path / "extra_label.json")
    error = _refusal(capsys, ["--model", tiny_export["float32"], "--sidecar", extra, *base])
    assert "outputs 4 classes" in error and "5 labels" in error

    renamed = [label.upper() for label in sidecar["labels"]]
    (tmp_path / "renamed.json").write_text(json.dumps({**sidecar, "labels": renamed}))
    error = _refusal(capsys, ["--model", tiny_export["float32"], "--sidecar", str(tmp_path / "renamed.json"), *base])
    assert f"bins.classes.{sidecar['labels'][0]}" in error and "names no class of the model" in error

    error = _refusal(capsys, ["--model", tiny_export["float32"], "--sidecar", str(tmp_path / "missing.json"), *base])
    assert "missing.json' not found" in error


def test_benchmark_prints_a_table(tmp_path, tiny_export, write_config):
    folder, _ = _belt_folder(tmp_path, tiny_export, count=3)
    result = subprocess.run(
        [sys.executable, RUNNER, "--model", tiny_export["int8"], "--source", f"folder:{folder}",
         "--config", write_config(), "--benchmark", "20"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = dict(re.split(r"\s{2,}", line.strip()) for line in result.stdout.splitlines()[1:])
    assert rows["items"] == "20"
    for name in ("items/s", "latency p50 (ms)", "latency p95 (ms)", "invoke p50 (ms)", "overhead over invoke() (%)"):
        assert name in rows
    assert json.loads((tmp_path / "summary.json").read_text())["items"] == 20
