"""A bad config is refused with one line naming the key and the fix."""

import os

import pytest

from edge.config import ConfigError, load_config, parse_config
from edge.drivers import modbus_server
from edge.runner import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VALID = """
[bins]
default = "mixed"
recheck = "recheck"
classes = { quartz = "light", galena = "heavy" }
[belt]
speed_mm_s = 500
camera_to_ejector_mm = 600
valve_lead_ms = 20
"""


def test_example_config_is_valid():
    config = load_config(os.path.join(REPO, "edge", "example_config.toml"))
    assert config.belt.speed_mm_s > 0 and config.bins.recheck


def test_defaults_and_values():
    config = parse_config(VALID)
    assert config.bins.classes == {"quartz": "light", "galena": "heavy"}
    assert config.actuator.type == "jsonl" and config.actuator.path == "-"
    assert config.decision.confidence_threshold == 0.8 and config.source.roi is None
    assert config.bin_names() == {"mixed", "recheck", "light", "heavy"}


@pytest.mark.parametrize(
    "text, expected",
    [
        (VALID.replace("speed_mm_s = 500", "speed_mm_s = -3"), ["'belt.speed_mm_s' must be > 0.0, got -3", "= 500"]),
        (VALID.replace("speed_mm_s = 500", "sped_mm_s = 500"), ["unknown key 'belt.sped_mm_s'", "speed_mm_s"]),
        (VALID.replace('recheck = "recheck"', ""), ["'bins.recheck' is missing", 'recheck = "recheck"']),
        (VALID.replace("valve_lead_ms = 20", "valve_lead_ms = 1500"), ["'belt.valve_lead_ms'", "1200 ms"]),
        (VALID.replace('"heavy"', '"heavy bin"'), ["'bins.classes'", "galena"]),
        (VALID + "[source]\nroi = [0, 0, 100]\n", ["'source.roi'", "[x, y, width, height]"]),
        (VALID + "[actuator]\ntype = \"gpio\"\n", ["'actuator.pins' is missing"]),
        (VALID + '[actuator]\ntype = "gpio"\npins = { light = 17, shiny = 27 }\n', ["'actuator.pins.shiny'", "no bin"]),
        (VALID + '[actuator]\ntype = "gpio"\npins = { light = 17, recheck = 27 }\n', ["'actuator.pins.recheck'", "never"]),
        (VALID + "[actuator]\ntype = \"serial\"\n", ["'actuator.port' is missing"]),
        (VALID + "[actuator]\ntype = \"can\"\n", ["'actuator.type' must be one of 'jsonl', 'serial', 'gpio', 'modbus'"]),
        (VALID + '[actuator]\ntype = "modbus"\nport = "/dev/ttyUSB0"\n', ["'actuator.port' must be a TCP port"]),
        (VALID + '[actuator]\ntype = "modbus"\nport = 70000\n', ["'actuator.port' must be a TCP port"]),
        (VALID + '[actuator]\ntype = "serial"\nport = 5020\n', ["'actuator.port' is missing or not a device path"]),
        (VALID + "[decision]\nconfidence_threshold = 1.5\n", ["'decision.confidence_threshold' must be <= 1.0"]),
        (VALID + "[review]\nmax_items = 0\n", ["'review.max_items' must be >= 1"]),
        (VALID + "[alarms]\nwindow = 3\n", ["unknown section [alarms]"]),
        (VALID + "[belt\n", ["is not valid TOML"]),
    ],
)
def test_bad_config_names_the_key_and_the_fix(text, expected):
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "belt.toml")
    message = str(raised.value)
    assert "\n" not in message and message.startswith("config 'belt.toml'")
    for part in expected:
        assert part in message


def test_modbus_defaults():
    config = parse_config(VALID + '[actuator]\ntype = "modbus"\n')
    assert (config.actuator.host, modbus_server.port(config), config.actuator.unit_id) == ("127.0.0.1", 5020, 1)
    assert config.bin_codes() == ["recheck", "heavy", "light", "mixed"]


def test_cli_exits_with_one_line(tmp_path, capsys):
    path = tmp_path / "belt.toml"
    path.write_text(VALID.replace("speed_mm_s = 500", "speed_mm_s = \"fast\""))
    code = main(["--model", "m.tflite", "--source", f"folder:{tmp_path}", "--config", str(path)])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "'belt.speed_mm_s' must be a number" in error
    assert main(["--model", "m.tflite", "--source", "folder:x", "--config", str(tmp_path / "none.toml")]) == 2
    assert "cannot be read" in capsys.readouterr().err
