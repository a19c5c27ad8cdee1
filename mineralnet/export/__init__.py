"""Export a trained run to TFLite (float32, float16, dynamic-range and full-integer int8), verified with the
LiteRT interpreter against the Keras model before anything is written. See docs/export.md."""

from mineralnet.export.convert import FORMATS, convert, parse_formats
from mineralnet.export.errors import ExportError
from mineralnet.export.operators import check_no_flex, list_operators
from mineralnet.export.pipeline import MIN_FLOAT32_AGREEMENT, ExportPlan, complete_export, export_run, prepare_export
from mineralnet.export.sidecar import EXPORTER_VERSION

__all__ = [
    "EXPORTER_VERSION", "ExportError", "ExportPlan", "FORMATS", "MIN_FLOAT32_AGREEMENT", "check_no_flex",
    "complete_export", "convert", "export_run", "list_operators", "parse_formats", "prepare_export",
]
