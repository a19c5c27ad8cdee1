"""The exporter's view of a training run (mineralnet.rundir), checked before any slow work starts so bad input
fails in seconds with one line naming the file and the fix."""

import os
from dataclasses import dataclass

from mineralnet import rundir
from mineralnet.data import DataError, read_split
from mineralnet.export.errors import ExportError


@dataclass(frozen=True)
class RunInputs:
    """What the exporter reads from a run: the model file, labels, input size and the split rows."""

    path: str  # absolute run directory
    model_path: str
    labels: list
    image_size: int
    rows: list  # split.csv rows, each with an absolute `file` that exists

    def subset(self, name):
        return [row for row in self.rows if row["subset"] == name]


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_run(run_dir):
    """Check `run_dir` is a complete run whose split images all still exist; return its `RunInputs`."""
    try:
        run = rundir.Run(run_dir)
    except (rundir.RunError, ValueError) as error:  # ValueError: a config or label file that is not JSON
        raise ExportError(_first_line(error)) from None
    config_path, labels_path, split_path = (run.file(n) for n in (rundir.CONFIG, rundir.LABELS, rundir.SPLIT))
    if not isinstance(run.config, dict) or not {"data", "image_size"} <= set(run.config):
        raise ExportError(f"run config '{config_path}' lacks the keys data and image_size: restore it from the run.")
    labels = run.labels
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(label, str) for label in labels):
        raise ExportError(f"label file '{labels_path}' must be a JSON list of at least two class names.")

    data_dir = str(run.config["data"])
    try:
        rows = read_split(split_path, data_dir, check_files=False)
    except DataError as error:
        raise ExportError(_first_line(error)) from None
    gone = [row["file"] for row in rows if not os.path.isfile(row["file"])]
    if gone:
        raise ExportError(
            f"{len(gone)} image(s) of split '{split_path}' no longer exist, e.g. '{gone[0]}': restore the dataset "
            f"at '{data_dir}' or set \"data\" in '{config_path}' to where it now lives."
        )
    unknown = sorted({row["label"] for row in rows} - set(labels))
    if unknown:
        raise ExportError(f"split '{split_path}' has label(s) {', '.join(unknown)} missing from '{labels_path}'.")
    inputs = RunInputs(run.path, run.file(rundir.MODEL), labels, int(run.config["image_size"]), rows)
    if not inputs.subset("test"):
        raise ExportError(f"split '{split_path}' has no test rows: the verification gate needs a test subset.")
    return inputs


def load_model(inputs):
    """The run's Keras model, checked against its labels and input size."""
    try:
        model = rundir.Run(inputs.path).load_model()
    except rundir.RunError as error:  # its cause may be pages long (a corrupt zip, an unknown layer): keep a line
        reason = _first_line(error.__cause__ or error)
        raise ExportError(
            f"model file '{inputs.model_path}' does not load ({reason}): re-run training or restore model.keras."
        ) from None
    expected_input = (inputs.image_size, inputs.image_size, 3)
    if tuple(model.input_shape[1:]) != expected_input or model.output_shape[-1] != len(inputs.labels):
        raise ExportError(
            f"model file '{inputs.model_path}' takes {model.input_shape[1:]} and gives {model.output_shape[-1]} "
            f"classes but its run says {expected_input} and {len(inputs.labels)} labels: it belongs to another run."
        )
    return model
