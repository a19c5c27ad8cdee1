"""Publishers served on a port, one row each in SERVED: the only place that knows their flags.

A row gives the flag's name (`--NAME-port P`, `--NAME-host H`, H default 127.0.0.1: nothing is exposed beyond this
computer unless asked), what it serves (the flag's help), the libraries it needs (checked at start, before any work:
one line with the pip command), any extra flags, and `start(runner, args)`, which subscribes it to the runner (edge/
sorter.py) and returns an object with `serve(host, port)` (binds now, raising OSError for a taken port; returns the
address for the start line) and `close()`.

To add one: its file beside this one, a row below, and a test that reads it over 127.0.0.1 like
tests/edge/test_edge_metrics.py (or tests/edge/test_edge_opcua.py).
"""

import os
from dataclasses import dataclass, field

from edge import opcua_access


def _metrics(runner, args):
    from edge.telemetry import Telemetry

    telemetry = Telemetry(runner.model)
    runner.attach_telemetry(telemetry)
    return telemetry


def _line_page(runner, args):
    from edge.ui import LineUI

    return LineUI(runner, args.ui_token)


def _ui_token(parser):
    parser.add_argument("--ui-token", default=os.environ.get("MINERALNET_UI_TOKEN") or None,
                        help="token that allows labelling review items on the page (default: $MINERALNET_UI_TOKEN; "
                             "none: read-only)")


def _opcua(runner, args):
    from edge.opcua import VisionServer

    password = args.opcua_password or os.environ.get(opcua_access.PASSWORD_ENV) or None
    server = VisionServer(runner, opcua_access.Access(args.opcua_user, password, args.opcua_trust), args.opcua_cert,
                          args.opcua_key)
    runner.publishers.append(server)
    return server


@dataclass(frozen=True)
class Served:
    what: str  # the flag's help
    libraries: tuple  # ((module, pip package), ...)
    start: object  # (runner, args) -> an object with serve(host, port) and close()
    options: object = field(default=None)  # (parser) -> None: flags of its own


SERVED = {
    "metrics": Served("Prometheus metrics", (("prometheus_client", "prometheus-client"),), _metrics),
    "ui": Served("the operator's line page", (("starlette", "starlette"), ("uvicorn", "uvicorn")), _line_page,
                 _ui_token),
    "opcua": Served("the OPC UA Machine Vision server (OPC 40100-1; edge/opcua.py)", (("asyncua", "asyncua"),),
                    _opcua, opcua_access.add_options),
}


def add_options(parser):
    for name, served in SERVED.items():
        parser.add_argument(f"--{name}-port", type=int, help=f"serve {served.what} on this port (0: any free one)")
        parser.add_argument(f"--{name}-host", default="127.0.0.1", help=f"address for --{name}-port (default "
                            "127.0.0.1)")
        if served.options is not None:
            served.options(parser)


def asked(args):
    """[(name, Served, host, port)] of the rows whose port was given."""
    return [(name, served, getattr(args, f"{name}_host"), getattr(args, f"{name}_port"))
            for name, served in SERVED.items() if getattr(args, f"{name}_port") is not None]
