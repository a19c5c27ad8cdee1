"""Optional libraries (pyserial, gpiozero, pymodbus, prometheus-client, OpenCV), checked when the runner starts.

A driver imports its library only when it opens, so a missing one used to surface as an actuator error on every
item (all sorted to recheck, exit 0) or a traceback in the capture thread. `require` runs at start instead and
stops the runner with the pip command.
"""

import importlib


class MissingLibrary(ValueError):
    """A library the configuration needs is not installed; the message is one line with the pip command."""


def require(module, package, needed_for):
    """Import `module` now, or raise MissingLibrary naming `needed_for` and `pip install package`."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingLibrary(
            f"{needed_for} needs the Python package '{package}', which is not installed: pip install {package} "
            "(see edge/requirements.txt)."
        ) from None
