"""A runner that never dies and never loses its records (issue 13, point 4): output paths and libraries checked at
start, a summary that cannot be written goes to stderr, no command for the recheck bin, a config made from the
model's own labels, the shipped example and systemd unit."""

import configparser
import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from edge.config import load_config
from edge.runner import main, parse_args
from edge.sources import Capture, FolderSource

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUNNER = os.path.join(REPO, "edge", "runner.py")
EDGE = os.path.join(REPO, "edge")


def _folder(tmp_path, tiny_export, count=4):
    folder = tmp_path / "belt"
    folder.mkdir(exist_ok=True)
    for row in tiny_export["test_rows"][:count]:
        shutil.copy(row["file"], folder / f"{row['label']}_{os.path.basename(row['file'])}")
    return folder


def _run_cli(argv, cwd, hide=()):
    """The runner as a subprocess; modules in `hide` fail to import, as on a device where they are not installed."""
    script = (
        "import runpy, sys\n"
        + "".join(f"sys.modules[{name!r}] = None\n" for name in hide)
        + f"sys.argv = {[RUNNER, *argv]!r}\n"
        f"runpy.run_path({RUNNER!r}, run_name='__main__')\n"
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.parametrize("output", ["events", "summary", "review"])
def test_unwritable_outputs_are_refused_at_start(tmp_path, tiny_export, write_config, capsys, output):
    (tmp_path / "a_file").write_text("a file where a folder is needed")
    blocked = str(tmp_path / "a_file" / "out")
    config = write_config(
        records={"summary": blocked} if output == "summary" else {},
        review={"dir": blocked} if output == "review" else {},
    )
    argv = ["--model", tiny_export["float32"], "--source", f"folder:{_folder(tmp_path, tiny_export)}",
            "--config", config, "--events", str(tmp_path) if output == "events" else str(tmp_path / "events.jsonl")]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("runner: ") and "cannot be written" in error
    assert {"events": "--events", "summary": "records.summary", "review": "review.dir"}[output] in error
    assert not (tmp_path / "summary.json").exists()  # refused before sorting anything


def test_a_summary_that_cannot_be_written_goes_to_stderr(tmp_path, tiny_export, write_config, make_runner, capsys):
    out = tmp_path / "out"
    runner, events_path = make_runner(write_config(records={"summary": str(out / "summary.json")}), tiny_export["int8"])
    out.write_text("the summary's folder was replaced by a file while sorting")
    folder = _folder(tmp_path, tiny_export)
    summary = runner.run(Capture(FolderSource(str(folder), runner.clock), runner.clock, runner.events))
    assert summary["items"] == 4  # every item sorted
    lines = capsys.readouterr().err.strip().splitlines()
    assert "could not be written" in lines[-2] and str(out / "summary.json") in lines[-2]
    assert json.loads(lines[-1]) == summary
    with open(events_path) as handle:
        stop = [json.loads(line) for line in handle][-1]
    assert stop["type"] == "stop" and stop["summary"] is None


@pytest.mark.parametrize(
    "kind, module, package",
    [("serial", "serial", "pyserial"), ("gpio", "gpiozero", "gpiozero"), ("modbus", "pymodbus", "pymodbus")],
)
def test_a_missing_actuator_library_stops_the_runner_with_the_pip_command(
    tmp_path, tiny_export, write_config, kind, module, package
):
    actuator = {"serial": {"type": kind, "port": "/dev/ttyUSB0"}, "gpio": {"type": kind, "pins": {"bin_a": 17}},
                "modbus": {"type": kind}}[kind]
    argv = ["--model", tiny_export["float32"], "--source", f"folder:{_folder(tmp_path, tiny_export)}",
            "--config", write_config(actuator=actuator), "--events", str(tmp_path / "events.jsonl")]
    result = _run_cli(argv, tmp_path, hide=[module])
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and f"pip install {package}" in result.stderr
    assert not (tmp_path / "summary.json").exists()


def test_no_command_is_sent_for_the_recheck_bin(tmp_path, tiny_export, write_config, make_runner):
    # qhat = 1 (too few calibration images): every item is uncertain and rides on to the recheck bin.
    model = tmp_path / "model.tflite"
    shutil.copy(tiny_export["float32"], model)
    sidecar = json.loads(open(tiny_export["float32"][: -len(".tflite")] + ".json").read())
    sidecar["reject"] = {"method": "split_conformal", "alpha": 0.05, "qhat": 1.0, "n": 13, "score": "1 - p_true"}
    (tmp_path / "model.json").write_text(json.dumps(sidecar))
    runner, _ = make_runner(write_config(), str(model))
    summary = runner.run(Capture(FolderSource(str(_folder(tmp_path, tiny_export)), runner.clock), runner.clock,
                                 runner.events))
    assert summary["recheck"] == summary["items"] == 4 and summary["failed"] == 0
    assert (tmp_path / "commands.jsonl").read_text() == ""


def test_init_config_lists_the_models_own_labels(tmp_path, tiny_export, capsys):
    path = tmp_path / "belt.toml"
    assert main(["--init-config", str(path), "--model", tiny_export["int8"]]) == 0
    text = path.read_text()
    config = load_config(str(path))
    assert list(config.bins.classes) == tiny_export["labels"]
    config.check_labels(tiny_export["labels"])
    assert text.count("\n#") > 10  # commented, like the example it starts from
    assert main(["--init-config", str(path), "--model", tiny_export["int8"]]) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err


def test_the_shipped_example_runs_the_demo_model_and_logs_its_start(tmp_path, tiny_export):
    # The tests' tiny model is trained on the same synthetic demo classes as `train.py --demo`.
    example = os.path.join(EDGE, "example_config.toml")
    argv = ["--model", tiny_export["int8"], "--source", f"folder:{_folder(tmp_path, tiny_export)}",
            "--config", example, "--events", "events.jsonl"]
    result = _run_cli(argv, tmp_path)
    assert result.returncode == 0, result.stderr
    sha = json.loads(open(tiny_export["int8"][: -len(".tflite")] + ".json").read())["sha256"]
    start_line = [line for line in result.stderr.splitlines() if line.startswith("runner: config")][0]
    assert example in start_line and sha in start_line and "listening: none" in start_line
    with open(tmp_path / "events.jsonl") as handle:
        start = json.loads(handle.readline())
    assert start["type"] == "start" and start["config"] == example and start["model_sha256"] == sha
    # The example writes under runs/ of the working directory (git-ignored in a checkout), never beside the code.
    assert json.loads((tmp_path / "runs" / "edge" / "summary.json").read_text())["items"] == 4


def test_the_systemd_unit_has_restart_limits_and_a_valid_command():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    with open(os.path.join(EDGE, "mineralnet-runner.service")) as handle:
        unit.read_string(handle.read().replace("\\\n", " "))
    assert int(unit["Unit"]["StartLimitIntervalSec"]) >= 60 and 1 <= int(unit["Unit"]["StartLimitBurst"]) <= 10
    service = unit["Service"]
    assert float(service["RestartSec"]) >= 1 and service["Restart"] in ("on-failure", "always")
    assert "2" in service["RestartPreventExitStatus"].split()  # a bad config does not restart in a loop
    command = shlex.split(service["ExecStart"])
    assert command[1].endswith("edge/runner.py")
    args = parse_args(command[2:])
    assert args.model and args.source and args.config and args.events


def test_metrics_without_prometheus_client_stop_the_runner_with_the_pip_command(tmp_path, tiny_export, write_config):
    argv = ["--model", tiny_export["float32"], "--source", f"folder:{_folder(tmp_path, tiny_export)}",
            "--config", write_config(), "--metrics-port", "0"]
    result = _run_cli(argv, tmp_path, hide=["prometheus_client"])
    assert result.returncode == 2 and "pip install prometheus-client" in result.stderr
