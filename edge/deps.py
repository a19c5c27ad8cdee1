"""Optional libraries (pyserial, gpiozero, pymodbus, prometheus-client, OpenCV, Aravis), checked when the runner starts.

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


def require_gi(namespace, version, apt_package, needed_for):
    """`gi.repository.<namespace>` at `version` now (a GObject library such as Aravis, whose Python binding is
    PyGObject and whose library is a Debian package), or MissingLibrary naming both installs in one line."""
    try:
        import gi
    except ImportError:
        raise MissingLibrary(
            f"{needed_for} needs PyGObject (gi), which is not installed: apt-get install {apt_package} "
            "libgirepository1.0-dev libcairo2-dev pkg-config, then pip install 'PyGObject<3.51' (see edge/README.md)."
        ) from None
    try:
        gi.require_version(namespace, version)
        return importlib.import_module(f"gi.repository.{namespace}")
    except (ValueError, ImportError):
        raise MissingLibrary(
            f"{needed_for} needs {namespace} {version} through GObject introspection, which is not installed: "
            f"apt-get install {apt_package} (see edge/README.md)."
        ) from None
