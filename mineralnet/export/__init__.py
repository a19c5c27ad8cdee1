"""Export a trained run to TFLite (float32, float16, dynamic-range and full-integer int8), verified with the
LiteRT interpreter against the Keras model before anything is written. See docs/export.md.

Importing this package does not import TensorFlow (`export.py --help` answers at once): the names below are
resolved on first use (PEP 562), and the modules that need TensorFlow start it quietly through mineralnet._tf.
"""

import importlib
import sys
import types

_LAZY = {
    "EXPORTER_VERSION": "sidecar", "ExportError": "errors", "ExportPlan": "pipeline", "FORMATS": "options",
    "MIN_FLOAT32_AGREEMENT": "pipeline", "check_no_flex": "operators", "complete_export": "pipeline",
    "convert": "convert", "export_run": "pipeline", "list_operators": "operators", "parse_formats": "options",
    "prepare_export": "pipeline",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'mineralnet.export' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"mineralnet.export.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """The package's `convert` is the function, as when this file imported it eagerly: importing the submodule of
    that name (pipeline.py does) would otherwise set the package attribute to the module."""

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and name in _LAZY and _LAZY[name] == name:
            return  # the submodule stays reachable through sys.modules and `from ... import`
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
