"""Export a trained run to TFLite (float32, float16, dynamic-range and full-integer int8), verified with the
LiteRT interpreter against the Keras model before anything is written. See docs/export.md."""

from mineralnet._tf import import_tensorflow

import_tensorflow()  # first, so that TensorFlow's start-up lines stay hidden (`import mineralnet` no longer does it)
from mineralnet.export.convert import FORMATS, convert, parse_formats  # noqa: E402
from mineralnet.export.errors import ExportError  # noqa: E402
from mineralnet.export.operators import check_no_flex, list_operators  # noqa: E402
from mineralnet.export.pipeline import MIN_FLOAT32_AGREEMENT, ExportPlan, complete_export, export_run, prepare_export  # noqa: E402
from mineralnet.export.sidecar import EXPORTER_VERSION  # noqa: E402

__all__ = [
    "EXPORTER_VERSION", "ExportError", "ExportPlan", "FORMATS", "MIN_FLOAT32_AGREEMENT", "check_no_flex",
    "complete_export", "convert", "export_run", "list_operators", "parse_formats", "prepare_export",
]
