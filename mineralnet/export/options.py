"""The exporter's choices as its command line names them (formats, batch, accuracy gate, QAT fine-tuning), with no
TensorFlow import: `export.py --help` and argument errors answer at once, and convert.py, pipeline.py and
qat/process.py take these names from here."""

from dataclasses import dataclass

from mineralnet.export.errors import ExportError

# The default set. dynamic (int8 weights; XNNPACK quantizes each input row to int8 at run time) is the faithful
# int8 for CPUs: 97.9-100 % agreement with the Keras model on the three MINET-7 runs of benchmarks/RESULTS.md at
# 0.40x float32's latency; int8 (full integer, uint8 in and out) is for integer-only accelerators, 0.36x, 93-98 %.
FORMATS = ("float32", "float16", "dynamic", "int8")
QAT_FORMAT = "int8_qat"  # opt-in: quantization-aware training in a tf_keras child process (mineralnet.export.qat)
ALL_FORMATS = ("float32", "float16", "dynamic", "int8", QAT_FORMAT)
FULL_INTEGER = ("int8", QAT_FORMAT)
PRUNED_FORMAT = "float32_pruned"  # made by the QAT child when --prune-sparsity is given
BATCHES = ("1", "dynamic")  # the input's batch dimension: fixed to 1 (default), or free (None, -1 in the file)
# Percentage points of test accuracy a quantized format may lose against float32 before the export fails: on
# MINET-7 int8 stays within 1 point of float32 (benchmarks/RESULTS.md); more means a bad calibration or a model
# int8 does not suit, which a sorting line would only notice as wrong bins.
# It is a floor on the loss, not on the noise: a format is refused only when its loss is also credible by McNemar's
# exact one-sided test (mineralnet.export.gate, GATE_LEVEL), so one or two flipped images never refuse it.
MAX_ACCURACY_DROP = 1.0
# Exit status of an export that wrote the formats that passed but left out one or more that failed (named on
# stdout and in report.md); 2 (mineralnet.errors.EXIT_BAD_INPUT) stays bad input or nothing written.
EXIT_SOME_FORMATS_FAILED = 3


def parse_batch(batch):
    """'1' / 1 -> 1, 'dynamic' / None -> None (a free batch dimension); anything else is an ExportError."""
    if batch is None or str(batch).strip() == "dynamic":
        return None
    if str(batch).strip() == "1":
        return 1
    raise ExportError(f"--batch must be one of {', '.join(BATCHES)}, got '{batch}'.")


def parse_formats(formats):
    """'float32,int8' or a sequence -> ordered tuple of known formats, float32 always included (it is the
    reference the verification gate checks the conversion with)."""
    names = [f.strip() for f in formats.split(",")] if isinstance(formats, str) else [str(f).strip() for f in formats]
    names = [name for name in names if name]
    unknown = [name for name in names if name not in ALL_FORMATS]
    if unknown:
        raise ExportError(f"unknown format '{unknown[0]}': choose from {', '.join(ALL_FORMATS)} (comma-separated).")
    return tuple(name for name in ALL_FORMATS if name in names or name == "float32")


@dataclass(frozen=True)
class QatOptions:
    """Fine-tuning of the int8_qat and pruned models: epochs, (constant Adam) learning rate, and the target
    sparsity of pruning (None: no pruned model)."""

    epochs: int = 3
    lr: float = 1e-5
    prune_sparsity: float = None

    def child_formats(self, formats):
        """The formats the child process makes, in report order."""
        return ((QAT_FORMAT,) if QAT_FORMAT in formats else ()) + ((PRUNED_FORMAT,) if self.prune_sparsity else ())
