"""The actuator drivers, one file each and one row each in DRIVERS: the only place that knows them by name.

A driver file has `check(config)` (rules beyond its keys' own checks, raising `config.error`), `LIBRARY` (the
module and pip package it imports when it opens, checked at start; absent when it needs none), and two
constructors `(config, clock, labels) -> driver`: `bin_driver` for single items (a driver with `open()`,
`send(bin, due, frame_id)` and `close()`, `due` being the clock time the bin's valve must open) and `valve_driver`
for the valve bar of [particles] (`send(command, due, frame_id)`, the command an edge/valves.py Command), either
None where the hardware cannot do it. A driver may also publish (`record(item, capture_time, position)`,
`heartbeat(state, model_ok)`), listen (`listening`) and end a run more slowly than a fault closes it (`finish()`):
the Modbus server does; `outputs(config)` lists the files it writes, so that a bad path stops the runner at start. `plc_fires`: the PLC fires the
valves itself from the published decisions, so nothing is scheduled on the host for single items.

To add an actuator: a file here with those names, a row below, and a test beside tests/edge/test_edge_actuators.py.
"""

from dataclasses import dataclass

from edge.deps import require
from edge.drivers import gpio_pins, jsonl, modbus_server, serial_port


@dataclass(frozen=True)
class Driver:
    module: object  # the driver's file: check, bin_driver, valve_driver, LIBRARY
    plc_fires: bool = False

    @property
    def library(self):
        return getattr(self.module, "LIBRARY", None)

    @property
    def drives_valves(self):
        return self.module.valve_driver is not None


DRIVERS = {
    "jsonl": Driver(jsonl),
    "serial": Driver(serial_port),
    "gpio": Driver(gpio_pins),
    "modbus": Driver(modbus_server, plc_fires=True),
}


def check(config):
    """The configured driver's own rules, and whether it can drive what the config sorts (bins or a valve bar)."""
    driver = DRIVERS[config.actuator.type]
    if config.particles is not None and not driver.drives_valves:
        able = ", ".join(f'"{name}"' for name, d in DRIVERS.items() if d.drives_valves)
        raise config.error("actuator.type", f"is '{config.actuator.type}', which cannot drive a valve bar's lanes: "
                           f"with [particles] set type = {able}")
    driver.module.check(config)


def outputs(config):
    """[(config key, path, is a folder)] the configured driver writes, tried at start (edge/runner.py)."""
    return getattr(DRIVERS[config.actuator.type].module, "outputs", lambda _: [])(config)


def require_library(config):
    """At start: the configured driver's library must import (else MissingLibrary with the pip command)."""
    library = DRIVERS[config.actuator.type].library
    if library is not None:
        require(library[0], library[1], f'[actuator] type = "{config.actuator.type}"')


def make_driver(config, clock, labels=()):
    """A fresh, unopened driver from the config: the valve bar's with [particles], else the one per bin."""
    module = DRIVERS[config.actuator.type].module
    return (module.valve_driver if config.particles is not None else module.bin_driver)(config, clock, labels)
